"""The prediction log's age for Prometheus: when its oldest row was logged, and how long rows should be kept.

A daemon thread reads ``min(created_at)`` (one read of the column's index) every ``interval_seconds``, off the
request path, with an engine (one connection) of its own. Exported:

- ``inference_prediction_log_oldest_row_timestamp_seconds``: Unix time (seconds, UTC) of the oldest row; absent
  while the log is empty, its table not created yet, or the read failed.
- ``inference_prediction_log_retention_days``: PREDICTION_LOG_RETENTION_DAYS.

The Grafana dashboard shows ``time() - oldest`` as the age; the alert InferencePredictionLogRetentionOverdue fires
when the age passes the retention by 2 days (the purge is not running).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from readmission.db import create_db_engine
from readmission.errors import short_reason
from readmission.names import PREDICTION_LOG_TABLE
from readmission.retention import oldest_row_time

log = logging.getLogger(__name__)

OLDEST_ROW_METRIC = "inference_prediction_log_oldest_row_timestamp_seconds"


class PredictionLogAge:
    """Refreshes the oldest row's time every ``interval_seconds``; a Prometheus collector of it."""

    def __init__(
        self, url: str, registry: CollectorRegistry, retention_days: int, interval_seconds: float = 60.0
    ) -> None:
        self._url = url
        self._interval = interval_seconds
        self._engine: Engine | None = None
        self.oldest: float | None = None  # Unix seconds of the oldest row; None: unknown or empty
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prediction-log-age", daemon=True)
        registry.register(self)
        Gauge(
            "inference_prediction_log_retention_days",
            "Days a prediction-log row is kept (PREDICTION_LOG_RETENTION_DAYS); the purge deletes older rows.",
            registry=registry,
        ).set(retention_days)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The oldest row's time, when known (prometheus_client's collector protocol)."""
        if self.oldest is not None:
            doc = "Unix time of the oldest prediction-log row (absent while the log is empty or unreadable)."
            yield GaugeMetricFamily(OLDEST_ROW_METRIC, doc, value=self.oldest)

    def start(self) -> None:
        """Read now and then every interval, in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (without waiting for a read in progress) and release the connection."""
        self._stop.set()
        if self._engine is not None:
            self._engine.dispose()

    def refresh(self) -> None:
        """Read the oldest row's time; a failed read makes it unknown and logs once per run of failures."""
        try:
            self.oldest = self._read()
        except Exception as exc:  # any failure: the thread lives on and the age becomes unknown
            self.oldest = None
            if not self._failing:
                log.warning("cannot read the prediction log's oldest row (retried every minute): %s", short_reason(exc))
            self._failing = True
            return
        if self._failing:
            log.info("the prediction log's oldest row is readable again")
        self._failing = False

    def _read(self) -> float | None:
        if self._engine is None:
            self._engine = create_db_engine(self._url)
        if not inspect(self._engine).has_table(PREDICTION_LOG_TABLE):
            return None  # the writer creates it with the first row
        oldest = oldest_row_time(self._engine)
        return oldest.timestamp() if oldest is not None else None

    def _loop(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self._interval):
                return
