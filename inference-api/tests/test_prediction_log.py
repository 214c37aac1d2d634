"""The prediction log's writer against the real MariaDB: what is written reads back exactly, a retried
batch never doubles rows, and the counters add up."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select

from conftest import wait_until
from inference_api.metrics import Metrics
from inference_api.prediction_log import PredictionLog, create_log_engine, prediction_log
from readmission import schema


def _row(inputs: dict[str, Any], item: int = 0) -> dict[str, Any]:
    return {
        "log_id": uuid.uuid4().hex,
        "request_id": "req-1",
        "item": item,
        "created_at": dt.datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=dt.UTC),
        "endpoint": "/predict/batch",
        "model_name": "diabetes-readmission",
        "model_version": "7",
        "inputs": inputs,
        "predicted_class": "<30",
        "probability_no": 0.5,
        "probability_after_30": 0.25,
        "probability_within_30": 0.25,
        "risk_band": "medium",
        "latency_ms": 3.25,
    }


def test_rows_read_back_exactly_including_quotes_and_backslashes(mysql_log_url: str) -> None:
    tricky = {**next(iter(schema.EXAMPLE_ENCOUNTERS.values())), "note": 'O\'Brien said "hi" \\ C:\\temp\n\t\u00e9'}
    rows = [_row(tricky, i) for i in range(3)]
    log = PredictionLog(mysql_log_url, Metrics(), batch_size=2)
    log.start()
    log.submit(rows)
    wait_until(lambda: log.status().written == 3, 30, "three rows written")
    log.close(5)
    engine = create_log_engine(mysql_log_url)
    with engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(select(prediction_log).order_by(prediction_log.c.item))]
    engine.dispose()
    assert [r["inputs"] for r in stored] == [tricky] * 3
    assert [r["log_id"] for r in stored] == [r["log_id"] for r in rows]
    assert stored[0]["probability_within_30"] == 0.25 and stored[0]["model_version"] == "7"
    assert stored[0]["created_at"].replace(tzinfo=dt.UTC) == rows[0]["created_at"]


def test_a_batch_written_twice_is_stored_once(mysql_log_url: str) -> None:
    """The writer retries a batch whose COMMIT may have reached the database: rows carry their own id."""
    rows = [_row({"a": 1}, i) for i in range(4)]
    log = PredictionLog(mysql_log_url, Metrics())
    log._write(rows)
    log._write([*rows, _row({"a": 2}, 9)])
    engine = create_log_engine(mysql_log_url)
    with engine.connect() as conn:
        items = sorted(r.item for r in conn.execute(select(prediction_log.c.item)))
    engine.dispose()
    assert items == [0, 1, 2, 3, 9]
