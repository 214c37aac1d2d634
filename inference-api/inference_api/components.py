"""The parts of one service instance, built from its settings: metrics, model manager, prediction log (and
the probe of its oldest row, the reader of the model-quality results beside it), micro-batcher. ``create_app``
builds them, stores them on ``app.state`` and starts/stops them in its lifespan; endpoints reach them through
``deps``.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from inference_api.batcher import Batcher, InFlight
from inference_api.explaining import ExplainLimiter
from inference_api.log_age import PredictionLogAge
from inference_api.metrics import Metrics
from inference_api.model_details import ArtifactCache
from inference_api.model_manager import ModelManager, ModelSource
from inference_api.prediction_log import PredictionLog
from inference_api.quality_metrics import ModelQualityMetrics
from inference_api.settings import ApiSettings
from readmission.db import display_url

log = logging.getLogger("inference_api")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def mlflow_source_factory(settings: ApiSettings) -> Callable[[], ModelSource]:
    """Registry access through MLflow, with the client's retry/timeout settings applied first."""

    def build() -> ModelSource:
        settings.apply_mlflow_client_environment()
        from readmission.threads import available_cpus

        threads = settings.model_threads or available_cpus()
        return ModelSource(settings.tracking_uri, settings.model_name, settings.model_alias, threads)

    return build


@dataclass
class Components:
    """Everything a request needs besides its body."""

    settings: ApiSettings
    metrics: Metrics
    manager: ModelManager
    prediction_log: PredictionLog
    log_age: PredictionLogAge
    quality: ModelQualityMetrics  # the monitor's latest results and the outcome feed, from the log's database
    in_flight: InFlight
    batcher: Batcher
    instance_id: str  # INSTANCE_ID, or a random id for this process (/health/live reports it)
    artifacts: ArtifactCache = field(default_factory=ArtifactCache)  # the served runs' plots (GET /model/plots)
    explain_limiter: ExplainLimiter = field(default_factory=lambda: ExplainLimiter(10.0))  # set by ``build``
    bands: tuple[float, float] = field(init=False)  # the risk-band cut points, parsed once (not per answer)

    def __post_init__(self) -> None:
        self.bands = self.settings.bands

    @classmethod
    def build(cls, settings: ApiSettings, source_factory: Callable[[], ModelSource] | None = None) -> Components:
        """Build (not start) the parts; ``source_factory`` replaces the registry access (default: MLflow)."""
        metrics = Metrics()
        manager = ModelManager(
            source_factory or mlflow_source_factory(settings),
            metrics,
            poll_interval=settings.model_poll_interval_seconds,
            retry_max=settings.model_retry_max_seconds,
        )
        prediction_log = PredictionLog(
            settings.log_url,
            metrics,
            queue_size=settings.prediction_log_queue_size,
            batch_size=settings.prediction_log_batch_size,
            buffer_bytes=settings.prediction_log_buffer_bytes,
        )
        log_age = PredictionLogAge(settings.log_url, metrics.registry, settings.prediction_log_retention_days)
        quality = ModelQualityMetrics(settings.log_url, metrics.registry, settings.quality_metrics_interval_seconds)
        in_flight = InFlight()
        metrics.in_flight.set_function(lambda: in_flight.count)
        batcher = Batcher(
            manager,
            metrics,
            in_flight=in_flight,
            enabled=settings.microbatch_enabled,
            max_rows=settings.microbatch_max_rows,
            max_wait_ms=settings.microbatch_max_wait_ms,
            timeout_seconds=settings.predict_timeout_seconds,
        )
        instance_id = settings.instance_id or os.urandom(8).hex()
        parts = cls(settings, metrics, manager, prediction_log, log_age, quality, in_flight, batcher, instance_id)
        parts.explain_limiter = ExplainLimiter(settings.predict_timeout_seconds)
        return parts

    async def start(self) -> None:
        """Start the log writer, the log-age and quality readers, the registry poller and the batcher (event loop)."""
        s = self.settings
        log.info(
            "starting: model %s@%s from %s; prediction log %s; micro-batching %s",
            s.model_name,
            s.model_alias,
            display_url(s.tracking_uri) if "://" in s.tracking_uri else s.tracking_uri,
            display_url(s.log_url),
            f"on (<= {s.microbatch_max_rows} rows, {s.microbatch_max_wait_ms} ms)" if s.microbatch_enabled else "off",
        )
        if s.reload_token is None:  # only DEVELOPMENT_MODE allows it (settings.py)
            level = logging.INFO if s.host in LOOPBACK_HOSTS else logging.WARNING
            log.log(level, "DEVELOPMENT_MODE without RELOAD_TOKEN: POST /model/reload is open on %s:%s", s.host, s.port)
        self.prediction_log.start()
        self.log_age.start()
        self.quality.start()
        self.manager.start()
        self.batcher.start()
        # Everything imported so far (MLflow, sklearn, pandas) lives as long as the process: keep it out of
        # the garbage collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        # Each request allocates a few hundred short-lived objects; collect the young generation every 50,000
        # allocations instead of 700 (fewer, still short pauses; memory stays bounded).
        gc.set_threshold(50_000, 20, 100)

    async def stop(self) -> None:
        """Stop the batcher and the poller, then let the log writer flush (PREDICTION_LOG_FLUSH_SECONDS)."""
        await self.batcher.stop()
        self.manager.stop(wait=False)  # a registry call in progress may take MLFLOW_HTTP_REQUEST_TIMEOUT
        self.log_age.stop()
        self.quality.stop()
        await run_in_threadpool(self.prediction_log.close, self.settings.prediction_log_flush_seconds)
