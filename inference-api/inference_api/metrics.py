"""Prometheus metrics of the service (one registry per app, so tests can run several apps side by side).

One pod runs one uvicorn worker (scale with replicas), so the plain in-process client is exact; no
multiprocess mode is needed. Names follow Prometheus conventions: base units, `_total` for counters.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series (a timestamp per counter) only double the scrape size; Prometheus does not need them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RISK_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Every metric the service exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_requests",
            "HTTP requests answered, by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("inference_requests_in_flight", "HTTP requests being answered now.", registry=r)
        self.predictions = Counter(
            "inference_predictions", "Encounters scored, by predicted class.", ["predicted_class"], registry=r
        )
        self.risk = Histogram(
            "inference_readmission_risk",
            "Predicted 30-day readmission risk P(<30) of each scored encounter.",
            buckets=RISK_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "inference_model_batch_rows",
            "Rows per model call (micro-batches and batch requests).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "inference_model_info",
            "The model being served (value 1), by name, version, alias and run id.",
            ["name", "version", "alias", "run_id"],
            registry=r,
        )
        self.model_loaded = Gauge("inference_model_loaded", "1 when a model is loaded and serving.", registry=r)
        self.model_version = Gauge(
            "inference_model_version", "Registry version number of the model being served (0: none).", registry=r
        )
        self.model_loads = Counter(
            "inference_model_loads", "Models loaded and swapped in (start-up and alias changes).", registry=r
        )
        self.model_load_failures = Counter(
            "inference_model_load_failures",
            "Failed attempts to load or smoke-test a model version.",
            ["reason"],
            registry=r,
        )
        self.model_checks = Counter(
            "inference_model_registry_checks", "Registry alias checks, by outcome.", ["outcome"], registry=r
        )
        self.model_alias_current = Gauge(
            "inference_model_alias_current",
            "1 while the registry alias (MODEL_ALIAS) points at the served version; 0 when the alias or the "
            "version was deleted and the last good model is served without it.",
            registry=r,
        )
        self.model_registry_status = Gauge(
            "inference_model_registry_status",
            "What the registry says of the served version (value 1 on its status): ok, alias_missing, version_deleted.",
            ["status"],
            registry=r,
        )
        self.fast_path_mismatches = Counter(
            "inference_model_fast_path_mismatch",
            "Loads whose compiled fast path disagreed with the pipeline or failed to build or check (the pipeline "
            "path was served instead).",
            registry=r,
        )
        self.pipeline_fallback = Gauge(
            "inference_model_pipeline_fallback",
            "1 while the served version answers through the pipeline because its fast path failed its check at "
            "load (what the alert watches: a counter's first sample may already hold the failure).",
            registry=r,
        )
        self.prediction_path = Gauge(
            "inference_model_prediction_path",
            "How the served version computes its answers (value 1 on its path): compiled, compiled-calibrated, "
            "compiled-input, compiled-input-calibrated, or pipeline (the scikit-learn pipeline on a DataFrame: "
            "several times slower per request; a family without a compiled path, or a fallback).",
            ["path"],
            registry=r,
        )
        self.prediction_timeouts = Counter(
            "inference_prediction_timeouts",
            "Requests answered 504 because the model call exceeded PREDICT_TIMEOUT_SECONDS.",
            registry=r,
        )
        self.batcher_failures = Counter(
            "inference_batcher_failures",
            "Times the micro-batcher task stopped unexpectedly (the service is then not ready).",
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "inference_prediction_log_queue_depth", "Prediction-log rows waiting to be written.", registry=r
        )
        self.log_rows_written = Counter(
            "inference_prediction_log_rows_written", "Prediction-log rows written to the database.", registry=r
        )
        self.log_rows_dropped = Counter(
            "inference_prediction_log_rows_dropped",
            "Prediction-log rows dropped because the queue was full.",
            registry=r,
        )
        self.log_write_errors = Counter(
            "inference_prediction_log_write_errors", "Failed prediction-log writes (each is retried).", registry=r
        )
        # Labelled children are looked up once and kept: ``labels()`` validates and locks on every call.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._class_children: dict[str, Any] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (methods outside ``METHODS`` count as "other")."""
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            label = method if method in METHODS else "other"
            children = (self.requests.labels(endpoint, label, str(status)), self.request_duration.labels(endpoint))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_prediction(self, predicted_class: str, risk: float) -> None:
        """Count one scored encounter by class and record its 30-day risk."""
        child = self._class_children.get(predicted_class)
        if child is None:
            child = self._class_children[predicted_class] = self.predictions.labels(predicted_class)
        child.inc()
        self.risk.observe(risk)
