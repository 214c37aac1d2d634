"""The prediction log's table: written by the inference API, purged by its retention job and the CLI.

The definition lives in the shared library so that `readmission purge-predictions` can purge the embedded log
without importing the API (``readmission`` never imports ``inference_api``; the API imports this).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Float, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex, CreateTable

from readmission.db import write_transaction
from readmission.names import EXPLANATION_LOG_TABLE, MONITORING_TABLE, OUTCOME_TABLE, PREDICTION_LOG_TABLE

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
    # The caller's encounter id, when it sent one (never a model input): the key outcomes are joined on. Added
    # to a log made before it by ``ensure_log_columns`` (ALTER TABLE ... ADD COLUMN, nullable).
    Column("encounter_id", BigInteger, nullable=True, index=True),
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
_UTC = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")
# The outcome feed: the observed readmission of an encounter, recorded once (``readmission outcomes FILE``,
# POST /outcomes); a second, different label for the same encounter is refused, never overwrites the first.
prediction_outcomes = Table(
    OUTCOME_TABLE,
    metadata,
    Column("encounter_id", BigInteger, primary_key=True, autoincrement=False),
    Column("readmitted", String(4), nullable=False),  # the contract's target: NO, >30 or <30
    Column("observed_at", _UTC, nullable=False),  # when the outcome was known (UTC), as the feed says
    Column("recorded_at", _UTC, nullable=False, index=True),  # when this platform stored it (UTC)
    Column("source", String(16), nullable=False),  # "file" or "api"
)
# The monitor's results (``readmission monitor``, the CronJob ``python -m inference_api.monitor``): one row per
# run and model version served in the run's window. The API serves the latest run's rows as Prometheus metrics.
model_monitoring = Table(
    MONITORING_TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False, index=True),  # one monitor run (all its versions share it)
    Column("run_at", _UTC, nullable=False, index=True),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("window_start", _UTC, nullable=False),
    Column("window_end", _UTC, nullable=False),
    Column("predictions", Integer, nullable=False),  # logged predictions of the version in the window
    Column("with_encounter", Integer, nullable=False),  # ... of distinct encounters (an encounter_id was sent)
    Column("matured", Integer, nullable=False),  # ... of those, encounters whose outcome is recorded
    Column("roc_auc", Float, nullable=True),  # ROC-AUC of the 30-day risk on the matured ones (None: one class)
    Column("brier", Float, nullable=True),  # Brier score of the 30-day risk on the matured ones
    Column("test_roc_auc", Float, nullable=True),  # the version's ROC-AUC on its test split (registry tag)
    Column("calibration", JSON, nullable=False),  # [{band, outcomes, predicted, observed}] per risk band
    Column("drift", JSON, nullable=False),  # {model input: PSI against the version's reference profile}
    Column("drift_problem", String(512), nullable=True),  # why drift was not measured (no profile, ...)
    Column("thresholds", JSON, nullable=False),  # {auc_drop, min_outcomes, psi, outcomes_stall_seconds}
    Column("action", String(512), nullable=True),  # what the monitor did: retraining triggered (run id) or why not
)
LOG_TABLES = (prediction_log, prediction_explanations)


def has_encounter_column(engine: Engine) -> bool:
    """Whether the log (which must exist) has the ``encounter_id`` column (a log made before #22 has not)."""
    return "encounter_id" in {c["name"] for c in inspect(engine).get_columns(PREDICTION_LOG_TABLE)}


ADD_ENCOUNTER_COLUMN = "ALTER TABLE prediction_log ADD COLUMN encounter_id BIGINT NULL"
ADD_ENCOUNTER_INDEX = "CREATE INDEX ix_prediction_log_encounter_id ON prediction_log (encounter_id)"


def ensure_log_columns(engine: Engine) -> None:
    """Give an existing prediction log the columns added after it was made (today ``encounter_id``, nullable),
    then the column's index, each on its own (an index missing after an interrupted upgrade is made next time):
    ``ALTER TABLE ... ADD COLUMN``, no rewrite of the rows. Safe when two processes do it at once (the loser finds
    the column there). Raises the database's error when the user may not (MySQL: ALTER and INDEX privileges;
    README, Operations, gives the statements to run as an administrator instead)."""
    if not has_encounter_column(engine):
        try:
            with write_transaction(engine) as conn:
                conn.execute(text(ADD_ENCOUNTER_COLUMN))
        except DBAPIError:
            if not has_encounter_column(engine):
                raise
    if "ix_prediction_log_encounter_id" not in {i["name"] for i in inspect(engine).get_indexes(PREDICTION_LOG_TABLE)}:
        try:
            with write_transaction(engine) as conn:
                conn.execute(text(ADD_ENCOUNTER_INDEX))
        except DBAPIError:
            names = {i["name"] for i in inspect(engine).get_indexes(PREDICTION_LOG_TABLE)}
            if "ix_prediction_log_encounter_id" not in names:
                raise


def create_tables(engine: Engine, *tables: Table) -> None:
    """Create ``tables`` unless they exist, with their indexes, except indexes on columns an older table lacks
    (``ensure_log_columns`` adds those). On SQLite as ``CREATE ... IF NOT EXISTS`` in a write transaction
    (``db.write_transaction``: a check-then-create would read first and then fail to take the write lock while the
    API's log writer holds it); elsewhere with ``checkfirst`` (MySQL has no ``CREATE INDEX IF NOT EXISTS``)."""
    for table in tables:
        if engine.dialect.name != "sqlite":
            table.create(engine, checkfirst=True)
            continue
        with write_transaction(engine) as conn:
            conn.execute(CreateTable(table, if_not_exists=True))
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        with write_transaction(engine) as conn:
            for index in table.indexes:
                if {c.name for c in index.columns} <= present:
                    conn.execute(CreateIndex(index, if_not_exists=True))
