"""The served model: loaded from the registry alias, smoke-tested, swapped atomically, polled for changes.

``current`` is one immutable ``LoadedModel``; a swap replaces the reference in one assignment, so a
request (or a micro-batch) that took the old one finishes with it and the next takes the new one. A new
version is swapped in only after it has loaded and answered a smoke prediction; if it fails, the old one
keeps serving and the failure is counted and logged. While nothing is loaded the service is not ready
and ``not_ready_reason`` says why; the poller retries with backoff.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from inference_api.metrics import Metrics
from readmission import schema
from readmission.serving import Predictor

log = logging.getLogger(__name__)

CLASS_ORDER = ("NO", ">30", "<30")  # the order of the classes in every answer


@dataclass(frozen=True)
class LoadedModel:
    """A registry version in memory, ready to predict."""

    name: str
    version: str
    alias: str
    run_id: str
    predictor: Predictor
    loaded_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    # Columns of NO, >30 and <30 in the predictor's probabilities (its ``classes_`` order).
    class_columns: list[int] = field(init=False)

    def __post_init__(self) -> None:
        labels = [str(label) for label in self.predictor.classes_]
        object.__setattr__(self, "class_columns", [labels.index(c) for c in CLASS_ORDER])


@dataclass(frozen=True)
class VersionRef:
    """What the alias points at in the registry."""

    version: str
    run_id: str


class ModelSource:
    """Registry access through the MLflow client (kept behind a small interface for clarity)."""

    def __init__(self, tracking_uri: str, name: str, alias: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.alias = alias

    def resolve(self) -> VersionRef:
        """The version the alias points at (raises if the registry is down or the alias is unset)."""
        version = self._client.get_model_version_by_alias(self.name, self.alias)
        return VersionRef(str(version.version), str(version.run_id or ""))

    def load(self, ref: VersionRef) -> tuple[Any, dict[str, float]]:
        """The fitted model object of a version and its run's metrics."""
        import mlflow.sklearn

        model = mlflow.sklearn.load_model(f"models:/{self.name}/{ref.version}")
        metrics: dict[str, float] = {}
        if ref.run_id:
            metrics = {k: float(v) for k, v in self._client.get_run(ref.run_id).data.metrics.items()}
        return model, metrics


def smoke_test(predictor: Predictor) -> None:
    """Predict the example patients; raise if the answer is not a proper distribution over the classes."""
    if sorted(str(c) for c in predictor.classes_) != sorted(schema.TARGET_LABELS):
        raise ValueError(f"model classes {list(predictor.classes_)} are not {sorted(schema.TARGET_LABELS)}")
    probabilities = predictor.predict_proba(list(schema.EXAMPLE_ENCOUNTERS.values()))
    if probabilities.shape != (len(schema.EXAMPLE_ENCOUNTERS), len(schema.TARGET_LABELS)):
        raise ValueError(f"smoke prediction has shape {probabilities.shape}")
    if not np.all(np.isfinite(probabilities)) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("smoke prediction is not a probability distribution")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


class ModelManager:
    """Holds the served model and keeps it in step with the registry alias."""

    def __init__(
        self,
        source_factory: Callable[[], ModelSource],
        metrics: Metrics,
        poll_interval: float = 30.0,
        retry_max: float = 30.0,
    ) -> None:
        self._source_factory = source_factory
        self._source: ModelSource | None = None
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._retry_max = retry_max
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self.current: LoadedModel | None = None
        self.not_ready_reason = "the model has not been loaded yet"
        self.last_error: str | None = None
        self._failed_version: str | None = None

    def start(self) -> None:
        """Begin polling (the first check runs at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def check(self) -> str:
        """Compare the alias with the served version; load and swap if it moved. Returns what happened."""
        with self._lock:
            return self._check()

    def _check(self) -> str:
        try:
            if self._source is None:
                self._source = self._source_factory()
            ref = self._source.resolve()
        except Exception as exc:
            reason = f"cannot resolve the registry alias: {_short(exc)}"
            self._metrics.model_checks.labels(outcome="registry_error").inc()
            self.last_error = reason
            if self.current is None:
                self.not_ready_reason = reason
            log.warning("%s", reason)
            return "registry_error"
        current = self.current
        if current is not None and current.version == ref.version:
            self._metrics.model_checks.labels(outcome="unchanged").inc()
            return "unchanged"
        try:
            started = time.perf_counter()
            model, run_metrics = self._source.load(ref)
            predictor = Predictor(model)
            smoke_test(predictor)
        except Exception as exc:
            reason = f"version {ref.version} failed to load: {_short(exc)}"
            self._metrics.model_load_failures.labels(reason=type(exc).__name__).inc()
            self._metrics.model_checks.labels(outcome="load_failed").inc()
            self.last_error = reason
            if self.current is None:
                self.not_ready_reason = reason
            (log.warning if self._failed_version == ref.version else log.error)(
                "%s; %s", reason, f"still serving version {current.version}" if current else "not ready"
            )
            self._failed_version = ref.version
            return "load_failed"
        loaded = LoadedModel(
            name=self._source.name,
            version=ref.version,
            alias=self._source.alias,
            run_id=ref.run_id,
            predictor=predictor,
            loaded_at=datetime.now(UTC),
            metrics=run_metrics,
        )
        self.current = loaded  # the swap: one reference assignment
        # The model lives until the next swap: keep it out of the collector's full passes. Unfreeze first, so
        # the replaced model's objects (frozen at its own swap) become collectable again.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_error = None
        self._failed_version = None
        self._metrics.model_loads.inc()
        self._metrics.model_checks.labels(outcome="swapped").inc()
        self._metrics.model_info.clear()
        self._metrics.model_info.labels(loaded.name, loaded.version, loaded.alias, loaded.run_id).set(1)
        self._metrics.model_loaded.set(1)
        self._metrics.model_version.set(float(ref.version) if ref.version.isdigit() else 0)
        log.info(
            "serving %s version %s (alias %s, run %s, %s path), loaded in %.1f s%s",
            loaded.name,
            loaded.version,
            loaded.alias,
            loaded.run_id,
            predictor.path,
            time.perf_counter() - started,
            f"; replaced version {current.version}" if current else "",
        )
        return "swapped"

    def _poll(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self.check()
            if self.current is None:
                wait, backoff = backoff, min(backoff * 2, self._retry_max)
            else:
                wait, backoff = self._poll_interval, 1.0
            self._stop.wait(wait)
