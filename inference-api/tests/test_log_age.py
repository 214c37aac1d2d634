"""The prediction log's age in /metrics, read from real databases: absent while empty, the oldest row's Unix
time once rows exist (MySQL's and SQLite's zone-less UTC read back right), moving forward after a purge."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from apisupport import settings_for, wait_until
from fastapi.testclient import TestClient
from logsupport import seed_log
from prometheus_client import CollectorRegistry

from inference_api.app import create_app
from inference_api.log_age import OLDEST_ROW_METRIC, PredictionLogAge
from readmission.db import create_db_engine
from readmission.retention import purge_prediction_log


def test_the_oldest_row_time_follows_the_log_and_the_purge(either_log_url: str) -> None:
    registry = CollectorRegistry()
    age = PredictionLogAge(either_log_url, registry, retention_days=30)
    age.refresh()  # no table yet
    assert registry.get_sample_value(OLDEST_ROW_METRIC) is None
    assert registry.get_sample_value("inference_prediction_log_retention_days") == 30
    now = dt.datetime.now(dt.UTC).replace(microsecond=250_000)
    engine = create_db_engine(either_log_url)
    seed_log(engine, [now - dt.timedelta(days=45), now - dt.timedelta(days=10), now])
    age.refresh()
    assert registry.get_sample_value(OLDEST_ROW_METRIC) == (now - dt.timedelta(days=45)).timestamp()
    purge_prediction_log(engine, 30, pause_seconds=0)
    age.refresh()
    assert registry.get_sample_value(OLDEST_ROW_METRIC) == (now - dt.timedelta(days=10)).timestamp()
    engine.dispose()
    age.stop()


def test_the_api_exports_the_age_and_the_retention(tmp_path: Path) -> None:
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    oldest = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    seed_log(create_db_engine(log_url), [oldest, oldest + dt.timedelta(days=3)])
    empty_registry = f"sqlite:///{tmp_path / 'empty-mlflow.db'}"  # no model needed for /metrics
    settings = settings_for(empty_registry, log_url, prediction_log_retention_days=60)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: OLDEST_ROW_METRIC in client.get("/metrics").text, what="the first read of the log")
        samples = {
            line.split()[0]: float(line.split()[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("inference_prediction_log_")
        }
    assert samples[OLDEST_ROW_METRIC] == oldest.timestamp()
    assert samples["inference_prediction_log_retention_days"] == 60
