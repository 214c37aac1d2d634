"""The model's quality in production for Prometheus: the latest monitor run's results and the outcome feed's
last delivery.

The monitor (``readmission monitor``, the CronJob ``python -m inference_api.monitor``) writes one row per run
and served model version to ``model_monitoring``; the outcome feed fills ``prediction_outcomes``. Prometheus
cannot read a database, so the API serves both as gauges: a daemon thread reads the rows of the latest run
(greatest ``run_at``) and ``max(prediction_outcomes.recorded_at)`` every ``interval_seconds``
(QUALITY_METRICS_INTERVAL_SECONDS), off the request path, with an engine (one connection) of its own, and
builds the metric families; a scrape only hands them out, so it never waits for the database and never fails.
Every metric is absent while its table is missing or empty, or the last read failed (alerts and dashboards
then see no data, not a stale or made-up value).

Exported (``{model_version}`` is the version the row is about; thresholds are the run's, label-less):

- ``inference_live_roc_auc``, ``inference_test_roc_auc`` (each only when known), ``inference_live_brier_score``,
  ``inference_matured_outcomes``, ``inference_outcome_coverage_ratio`` (matured / predictions with an
  encounter, absent when there were none), ``inference_monitored_predictions``;
- ``inference_calibration_predicted_risk``, ``inference_calibration_observed_rate`` (when known),
  ``inference_calibration_outcomes``, by ``{model_version, band}``;
- ``inference_feature_drift_psi{model_version, feature}``;
- ``inference_monitor_last_run_timestamp_seconds``, ``inference_outcomes_last_received_timestamp_seconds``;
- ``inference_monitor_auc_drop_threshold``, ``inference_monitor_min_outcomes``,
  ``inference_monitor_psi_threshold``, ``inference_monitor_outcomes_stall_seconds``;
- ``inference_monitor_retraining_triggered{model_version}``: 1 when the run triggered a retraining.

The alerts on them are in prometheus/rules/quality.yml, the dashboard grafana/dashboards/model-quality.json.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, Engine

from readmission.db import create_db_engine
from readmission.errors import short_reason
from readmission.names import MONITORING_TABLE, OUTCOME_TABLE
from readmission.prediction_table import model_monitoring, prediction_outcomes

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
VERSION = ("model_version",)

# Per-version gauges: name, help, the value of a monitor row (None: absent for that version).
PER_VERSION: tuple[tuple[str, str, Callable[[Row], float | None]], ...] = (
    ("inference_live_roc_auc", "ROC-AUC of the 30-day risk on the matured outcomes (latest monitor run).",
     lambda r: r["roc_auc"]),
    ("inference_test_roc_auc", "ROC-AUC of the version on its test split (registry).", lambda r: r["test_roc_auc"]),
    ("inference_live_brier_score", "Brier score of the 30-day risk on the matured outcomes (latest monitor run).",
     lambda r: r["brier"]),
    ("inference_matured_outcomes", "Monitored encounters whose outcome is recorded (latest monitor run).",
     lambda r: r["matured"]),
    ("inference_outcome_coverage_ratio", "Share of the monitored encounters whose outcome is recorded.",
     lambda r: r["matured"] / r["with_encounter"] if r["with_encounter"] else None),
    ("inference_monitored_predictions", "Logged predictions in the latest monitor run's window.",
     lambda r: r["predictions"]),
    ("inference_monitor_retraining_triggered", "1 when the latest monitor run triggered a retraining, else 0.",
     lambda r: 1.0 if str(r["action"] or "").startswith("triggered") else 0.0),
)  # fmt: skip
# Per-band gauges: name, help, key of a calibration entry {band, outcomes, predicted, observed}.
PER_BAND = (
    ("inference_calibration_predicted_risk", "Mean predicted 30-day risk of the band's matured outcomes.", "predicted"),
    ("inference_calibration_observed_rate", "Observed <30 rate of the band's matured outcomes.", "observed"),
    ("inference_calibration_outcomes", "Matured outcomes in the risk band.", "outcomes"),
)
# The run's thresholds, label-less: name, help, key of the thresholds JSON.
THRESHOLDS = (
    ("inference_monitor_auc_drop_threshold", "Live ROC-AUC drop below test that counts as degraded.", "auc_drop"),
    ("inference_monitor_min_outcomes", "Matured outcomes needed before the live ROC-AUC is judged.", "min_outcomes"),
    ("inference_monitor_psi_threshold", "PSI of a model input above which it counts as drifted.", "psi"),
    ("inference_monitor_outcomes_stall_seconds", "Seconds without a new outcome that count as a stalled feed.",
     "outcomes_stall_seconds"),
)  # fmt: skip
LAST_RUN = "inference_monitor_last_run_timestamp_seconds"
LAST_OUTCOME = "inference_outcomes_last_received_timestamp_seconds"


def _unix(moment: dt.datetime) -> float:
    """Unix seconds of a stored UTC time (SQLite and MySQL give it back without a zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _gauge(name: str, doc: str, labels: Sequence[str], samples: Iterable[tuple[list[str], Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        if value is not None:
            family.add_metric(values, float(value))
    return family


def version_families(rows: Sequence[Row]) -> list[GaugeMetricFamily]:
    """The per-version and per-band gauges of one run's rows (a run that saw no predictions stores one row
    without a version: it gives none)."""
    rows = [r for r in rows if r["model_version"]]
    families = [_gauge(n, d, VERSION, (([r["model_version"]], value(r)) for r in rows)) for n, d, value in PER_VERSION]
    for name, doc, key in PER_BAND:
        samples = (([r["model_version"], c["band"]], c.get(key)) for r in rows for c in r["calibration"] or [])
        families.append(_gauge(name, doc, ("model_version", "band"), samples))
    drift = (([r["model_version"], feature], psi) for r in rows for feature, psi in (r["drift"] or {}).items())
    doc = "Population stability index of a model input in the latest monitor run's window against training."
    families.append(_gauge("inference_feature_drift_psi", doc, ("model_version", "feature"), drift))
    return families


def run_families(rows: Sequence[Row], last_outcome: dt.datetime | None) -> list[GaugeMetricFamily]:
    """The run's time and thresholds (of its last row) and the outcome feed's last delivery."""
    families = []
    if rows:
        doc = "Unix time of the latest monitor run."
        families.append(_gauge(LAST_RUN, doc, (), [([], max(_unix(r["run_at"]) for r in rows))]))
        thresholds = rows[-1]["thresholds"] or {}
        families += [_gauge(name, about, (), [([], thresholds.get(key))]) for name, about, key in THRESHOLDS]
    if last_outcome is not None:
        doc = "Unix time the latest outcome was recorded (prediction_outcomes.recorded_at)."
        families.append(_gauge(LAST_OUTCOME, doc, (), [([], _unix(last_outcome))]))
    return [family for family in families if family.samples]


class ModelQualityMetrics:
    """Refreshes the latest monitor run's metrics every ``interval_seconds``; a Prometheus collector of them."""

    def __init__(self, url: str, registry: CollectorRegistry, interval_seconds: float = 60.0) -> None:
        self._url = url
        self._interval = interval_seconds
        self._engine: Engine | None = None
        self.families: list[GaugeMetricFamily] = []  # replaced whole by each read: a scrape sees one run
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-quality-metrics", daemon=True)
        registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families of the last read (prometheus_client's collector protocol)."""
        yield from self.families

    def start(self) -> None:
        """Read now and then every interval, in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (without waiting for a read in progress) and release the connection."""
        self._stop.set()
        if self._engine is not None:
            self._engine.dispose()

    def refresh(self) -> None:
        """Read the latest run; a failed read makes every metric absent and logs once per run of failures."""
        try:
            self.families = self._read()
        except Exception as exc:  # any failure: the thread lives on and the metrics become unknown
            self.families = []
            if not self._failing:
                reason = short_reason(exc)
                log.warning("cannot read the model monitoring results (retried every %g s): %s", self._interval, reason)
            self._failing = True
            return
        if self._failing:
            log.info("the model monitoring results are readable again")
        self._failing = False

    def _read(self) -> list[GaugeMetricFamily]:
        if self._engine is None:
            self._engine = create_db_engine(self._url)
        with self._engine.connect() as conn:  # one connection for the table checks and both reads
            tables = inspect(conn)
            rows = latest_run(conn) if tables.has_table(MONITORING_TABLE) else []
            last_outcome = last_outcome_time(conn) if tables.has_table(OUTCOME_TABLE) else None
        families = [f for f in version_families(rows) if f.samples] if rows else []
        return families + run_families(rows, last_outcome)

    def _loop(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self._interval):
                return


def latest_run(conn: Connection) -> list[Row]:
    """The rows of the latest monitor run (the run of the row with the greatest ``run_at``), oldest row first."""
    t = model_monitoring
    run_id = conn.execute(select(t.c.run_id).order_by(t.c.run_at.desc(), t.c.id.desc()).limit(1)).scalar()
    if run_id is None:
        return []
    return [dict(row._mapping) for row in conn.execute(select(t).where(t.c.run_id == run_id).order_by(t.c.id))]


def last_outcome_time(conn: Connection) -> dt.datetime | None:
    """When the latest outcome was recorded (``max(recorded_at)``: one index read), None while there is none."""
    latest: dt.datetime | None = conn.execute(select(func.max(prediction_outcomes.c.recorded_at))).scalar_one()
    return latest
