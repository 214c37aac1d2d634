"""Prediction-log rows for the tests of the log's writer and of its retention (any test folder imports it:
tests/support is on pytest's path)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine

from readmission.prediction_table import metadata, prediction_log


def log_row(created_at: dt.datetime, item: int = 0, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of ``prediction_log`` as the API logs it (``created_at`` in UTC)."""
    return {
        "log_id": uuid.uuid4().hex,
        "request_id": "req-1",
        "item": item,
        "created_at": created_at,
        "endpoint": "/predict/batch",
        "model_name": "diabetes-readmission",
        "model_version": "7",
        "inputs": inputs if inputs is not None else {"age": "[70-80)"},
        "predicted_class": "<30",
        "probability_no": 0.5,
        "probability_after_30": 0.25,
        "probability_within_30": 0.25,
        "risk_band": "medium",
        "latency_ms": 3.25,
    }


def seed_log(engine: Engine, created: Iterable[dt.datetime]) -> int:
    """Create the table if needed and insert one row per timestamp (one transaction); the number inserted."""
    rows = [log_row(when, i) for i, when in enumerate(created)]
    metadata.create_all(engine, checkfirst=True)
    if rows:
        with engine.begin() as conn:
            conn.execute(prediction_log.insert(), rows)
    return len(rows)
