"""The model-quality gauges in /metrics, read from real databases (SQLite and the shared MariaDB): exactly the
latest monitor run's values (an older run's versions and values gone), unknown values absent rather than made
up, the outcome feed's last delivery; no metric and no error while the tables are missing or empty or the
database is down."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from apisupport import settings_for, wait_until
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from inference_api.app import create_app
from inference_api.quality_metrics import LAST_RUN, ModelQualityMetrics
from readmission.db import create_db_engine
from readmission.prediction_table import metadata, model_monitoring, prediction_outcomes

# The contract the alerts (prometheus/rules/quality.yml) and the dashboard (model-quality.json) rely on.
QUALITY_METRICS = {
    "inference_live_roc_auc",
    "inference_test_roc_auc",
    "inference_live_brier_score",
    "inference_matured_outcomes",
    "inference_outcome_coverage_ratio",
    "inference_monitored_predictions",
    "inference_calibration_predicted_risk",
    "inference_calibration_observed_rate",
    "inference_calibration_outcomes",
    "inference_feature_drift_psi",
    "inference_monitor_last_run_timestamp_seconds",
    "inference_outcomes_last_received_timestamp_seconds",
    "inference_monitor_auc_drop_threshold",
    "inference_monitor_min_outcomes",
    "inference_monitor_psi_threshold",
    "inference_monitor_outcomes_stall_seconds",
    "inference_monitor_retraining_triggered",
}
OLD_RUN_AT = dt.datetime(2026, 3, 1, 10, 0, 0, 125_000, tzinfo=dt.UTC)
RUN_AT = dt.datetime(2026, 3, 1, 11, 0, 0, 250_000, tzinfo=dt.UTC)
LAST_OUTCOME_AT = dt.datetime(2026, 3, 1, 9, 30, 0, 500_000, tzinfo=dt.UTC)
THRESHOLDS = {"auc_drop": 0.05, "min_outcomes": 200, "psi": 0.2, "outcomes_stall_seconds": 172800.0}


def monitor_row(run_id: str, run_at: dt.datetime, version: str, **values: Any) -> dict[str, Any]:
    """One ``model_monitoring`` row as the monitor writes it (a healthy version unless ``values`` say else)."""
    row = {
        "run_id": run_id,
        "run_at": run_at,
        "model_name": "diabetes-readmission",
        "model_version": version,
        "window_start": run_at - dt.timedelta(days=30),
        "window_end": run_at,
        "predictions": 1200,
        "with_encounter": 1000,
        "matured": 400,
        "roc_auc": 0.66,
        "brier": 0.09,
        "test_roc_auc": 0.68,
        "calibration": [
            {"band": "low", "outcomes": 250, "predicted": 0.08, "observed": 0.07},
            {"band": "medium", "outcomes": 100, "predicted": 0.21, "observed": 0.2},
            {"band": "high", "outcomes": 50, "predicted": 0.38, "observed": 0.36},
        ],
        "drift": {"age": 0.01, "number_inpatient": 0.03},
        "drift_problem": None,
        "thresholds": THRESHOLDS,
        "action": "none: live ROC-AUC within 0.05 of test",
    }
    return {**row, **values}


def seed_runs(engine: Engine) -> None:
    """An older run (versions 3 and 4), the latest run (versions 4 and 5), two outcomes."""
    old_thresholds = {"auc_drop": 0.1, "min_outcomes": 50, "psi": 0.25, "outcomes_stall_seconds": 3600.0}
    older = [
        monitor_row("run-old", OLD_RUN_AT, "3", roc_auc=0.5, thresholds=old_thresholds),
        monitor_row("run-old", OLD_RUN_AT, "4", matured=10, drift={"age": 0.9, "race": 0.4}),
    ]
    band = {"band": "high", "outcomes": 0, "predicted": 0.41, "observed": None}  # no outcome yet: rate unknown
    latest = [
        monitor_row("run-new", RUN_AT, "4", roc_auc=0.6, matured=250, action="triggered retraining (run abc)"),
        monitor_row(
            "run-new", RUN_AT, "5", roc_auc=None, brier=None, test_roc_auc=None, with_encounter=0, matured=0,
            predictions=30, calibration=[band], drift={"age": 0.31},
        ),
    ]  # fmt: skip
    outcomes = [
        {"encounter_id": encounter, "readmitted": "<30", "observed_at": at, "recorded_at": at, "source": "file"}
        for encounter, at in ((1, LAST_OUTCOME_AT - dt.timedelta(hours=5)), (2, LAST_OUTCOME_AT))
    ]
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(model_monitoring.insert(), older + latest)
        conn.execute(prediction_outcomes.insert(), outcomes)


def quality_samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The model-quality samples of a /metrics text: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name in QUALITY_METRICS
    }


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


EXPECTED = {
    _key("inference_live_roc_auc", model_version="4"): 0.6,
    _key("inference_test_roc_auc", model_version="4"): 0.68,
    _key("inference_live_brier_score", model_version="4"): 0.09,
    _key("inference_matured_outcomes", model_version="4"): 250,
    _key("inference_matured_outcomes", model_version="5"): 0,
    _key("inference_outcome_coverage_ratio", model_version="4"): 0.25,
    _key("inference_monitored_predictions", model_version="4"): 1200,
    _key("inference_monitored_predictions", model_version="5"): 30,
    _key("inference_monitor_retraining_triggered", model_version="4"): 1,
    _key("inference_monitor_retraining_triggered", model_version="5"): 0,
    _key("inference_calibration_predicted_risk", model_version="4", band="low"): 0.08,
    _key("inference_calibration_predicted_risk", model_version="4", band="medium"): 0.21,
    _key("inference_calibration_predicted_risk", model_version="4", band="high"): 0.38,
    _key("inference_calibration_predicted_risk", model_version="5", band="high"): 0.41,
    _key("inference_calibration_observed_rate", model_version="4", band="low"): 0.07,
    _key("inference_calibration_observed_rate", model_version="4", band="medium"): 0.2,
    _key("inference_calibration_observed_rate", model_version="4", band="high"): 0.36,
    _key("inference_calibration_outcomes", model_version="4", band="low"): 250,
    _key("inference_calibration_outcomes", model_version="4", band="medium"): 100,
    _key("inference_calibration_outcomes", model_version="4", band="high"): 50,
    _key("inference_calibration_outcomes", model_version="5", band="high"): 0,
    _key("inference_feature_drift_psi", model_version="4", feature="age"): 0.01,
    _key("inference_feature_drift_psi", model_version="4", feature="number_inpatient"): 0.03,
    _key("inference_feature_drift_psi", model_version="5", feature="age"): 0.31,
    _key("inference_monitor_last_run_timestamp_seconds"): RUN_AT.timestamp(),
    _key("inference_outcomes_last_received_timestamp_seconds"): LAST_OUTCOME_AT.timestamp(),
    _key("inference_monitor_auc_drop_threshold"): 0.05,
    _key("inference_monitor_min_outcomes"): 200,
    _key("inference_monitor_psi_threshold"): 0.2,
    _key("inference_monitor_outcomes_stall_seconds"): 172800.0,
}


def test_the_api_exports_only_the_latest_run(either_log_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(either_log_url)
    seed_runs(engine)
    engine.dispose()
    empty_registry = f"sqlite:///{tmp_path / 'empty-mlflow.db'}"  # no model needed for /metrics
    with TestClient(create_app(settings_for(empty_registry, either_log_url))) as client:
        wait_until(lambda: LAST_RUN in client.get("/metrics").text, what="the first read of the monitor's rows")
        samples = quality_samples(client.get("/metrics").text)
    # Version 3 (older run only) is gone, version 5's unknown AUCs, Brier, coverage and observed rate are absent.
    assert samples == EXPECTED


def test_a_new_run_replaces_the_previous_one(either_log_url: str) -> None:
    registry = CollectorRegistry()
    quality = ModelQualityMetrics(either_log_url, registry)
    engine = create_db_engine(either_log_url)
    seed_runs(engine)
    quality.refresh()
    assert quality_samples(generate_latest(registry).decode()) == EXPECTED
    newest = RUN_AT + dt.timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(model_monitoring.insert(), [monitor_row("run-next", newest, "5", drift={})])
    quality.refresh()
    samples = quality_samples(generate_latest(registry).decode())
    assert {labels for _, labels in samples} == {frozenset(), frozenset({("model_version", "5")})} | {
        frozenset({("model_version", "5"), ("band", band)}) for band in ("low", "medium", "high")
    }
    assert samples[_key("inference_live_roc_auc", model_version="5")] == 0.66
    assert samples[_key("inference_monitor_last_run_timestamp_seconds")] == newest.timestamp()
    assert not any(name == "inference_feature_drift_psi" for name, _ in samples)  # no input measured
    engine.dispose()
    quality.stop()


def test_missing_or_empty_tables_export_nothing(either_log_url: str) -> None:
    registry = CollectorRegistry()
    quality = ModelQualityMetrics(either_log_url, registry)
    quality.refresh()  # no table at all
    assert quality_samples(generate_latest(registry).decode()) == {}
    engine = create_db_engine(either_log_url)
    metadata.create_all(engine)
    quality.refresh()  # the tables, empty
    assert quality_samples(generate_latest(registry).decode()) == {}
    with engine.begin() as conn:
        outcome = {"encounter_id": 7, "readmitted": "NO", "source": "api"}
        conn.execute(prediction_outcomes.insert(), [{**outcome, "observed_at": RUN_AT, "recorded_at": RUN_AT}])
    quality.refresh()  # an outcome, no monitor run yet
    assert quality_samples(generate_latest(registry).decode()) == {
        _key("inference_outcomes_last_received_timestamp_seconds"): RUN_AT.timestamp()
    }
    engine.dispose()
    quality.stop()


def test_a_database_that_is_down_exports_nothing_and_fails_no_scrape(unreachable_mysql_url: str) -> None:
    registry = CollectorRegistry()
    quality = ModelQualityMetrics(unreachable_mysql_url, registry)
    quality.refresh()  # logs a warning, raises nothing
    assert quality_samples(generate_latest(registry).decode()) == {}
    quality.stop()
