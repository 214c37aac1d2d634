"""The prediction log's table: written by the inference API, purged by its retention job and the CLI.

The definition lives in the shared library so that `readmission purge-predictions` can purge the embedded log
without importing the API (``readmission`` never imports ``inference_api``; the API imports this).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Float, Integer, MetaData, String, Table
from sqlalchemy.dialects import mysql

from readmission.names import EXPLANATION_LOG_TABLE, PREDICTION_LOG_TABLE

metadata = MetaData()
prediction_log = Table(
    PREDICTION_LOG_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # Made by the service for each row: a retried INSERT whose first attempt did commit (connection lost
    # after COMMIT), or a message resent to a restarted writer, skips the rows already there.
    Column("log_id", String(32), nullable=False, unique=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("item", Integer, nullable=False),  # position in a batch request (0 for a single prediction)
    # UTC; microseconds kept on MySQL too (its DATETIME drops fractions unless told otherwise). Indexed: the
    # retention purge and the oldest-row gauge read it.
    Column(
        "created_at", DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False, index=True
    ),
    Column("endpoint", String(32), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False, index=True),
    Column("inputs", JSON, nullable=False),
    Column("predicted_class", String(8), nullable=False),
    Column("probability_no", Float, nullable=False),
    Column("probability_after_30", Float, nullable=False),
    Column("probability_within_30", Float, nullable=False),
    Column("risk_band", String(16), nullable=False),
    Column("latency_ms", Float, nullable=False),
)
# The explanations asked for (POST /predict?explain=true), one row per explained prediction: a table of its own,
# so the log of a service from before explanations needs no migration (created beside it on first use), and
# purged by the same retention.
prediction_explanations = Table(
    EXPLANATION_LOG_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("log_id", String(32), nullable=False, unique=True),  # the prediction_log row it explains
    Column(
        "created_at", DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False, index=True
    ),
    Column("explanation", JSON, nullable=False),  # the answer's explanation block, as returned
)
LOG_TABLES = (prediction_log, prediction_explanations)
