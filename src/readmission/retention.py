"""Prediction-log retention: delete rows older than N days in small chunks, and tell the oldest row's age.

Used by the API's retention job (``python -m inference_api.retention``, the CronJob) and by
``readmission purge-predictions`` (the embedded log). Each chunk is two short transactions: one reads the ids of
the next ``chunk_rows`` rows past the cutoff (``ORDER BY id LIMIT``), one deletes exactly those ids. The delete
locks only those old rows (by primary key on InnoDB; SQLite's single write lock for one short statement), so
the API's writer, which only inserts new rows, is never held for longer than one chunk's delete; a pause
between chunks lets it in. Timestamps are UTC (the log stores ``created_at`` in UTC, without a zone on MySQL
and SQLite).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Table, delete, func, inspect, select
from sqlalchemy.engine import Engine, make_url

from readmission.db import create_db_engine, display_url
from readmission.errors import ReadmissionError
from readmission.names import PREDICTION_LOG_TABLE
from readmission.prediction_table import model_monitoring, prediction_explanations, prediction_log, prediction_outcomes

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 5_000
DEFAULT_PAUSE_SECONDS = 0.1
PROGRESS_EVERY_SECONDS = 10.0


class PredictionLogMissingError(ReadmissionError):
    """The prediction log (its SQLite file or its table) does not exist yet: nothing was ever logged there."""


@dataclass(frozen=True)
class PurgeResult:
    """What a purge did: rows created before ``cutoff`` (UTC) were deleted, ``deleted`` of them, in ``chunks``
    delete transactions of at most the chunk size each, in ``seconds``."""

    cutoff: dt.datetime
    deleted: int
    chunks: int
    seconds: float
    explanations_deleted: int = 0  # logged explanations of the same period (table prediction_explanations)
    outcomes_deleted: int = 0  # outcomes recorded before the cutoff (table prediction_outcomes)
    monitoring_deleted: int = 0  # monitor results of runs before the cutoff (table model_monitoring)


def retention_cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    """The instant (UTC) before which rows are older than ``days`` days; ``days`` must be at least 1."""
    if days < 1:
        raise ValueError(f"the retention must be at least 1 day, got {days}")
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC) - dt.timedelta(days=days)


def open_prediction_log(url: str) -> Engine:
    """An engine of the log at ``url``; ``PredictionLogMissingError`` if its SQLite file or its table is absent
    (an SQLite file is never created here)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise PredictionLogMissingError(
            f"no prediction log at {parsed.database}: the API creates it with its first logged prediction "
            "(`make run`, then a prediction); check --log-url or PREDICTION_LOG_URL"
        )
    engine = create_db_engine(url)
    if not inspect(engine).has_table(PREDICTION_LOG_TABLE):
        engine.dispose()
        raise PredictionLogMissingError(
            f"{display_url(url)} has no table {PREDICTION_LOG_TABLE} yet: the API creates it with its first "
            "logged prediction"
        )
    return engine


def purge_prediction_log(
    engine: Engine,
    older_than_days: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    pause_seconds: float = DEFAULT_PAUSE_SECONDS,
    now: dt.datetime | None = None,
) -> PurgeResult:
    """Delete the rows created more than ``older_than_days`` days before ``now`` (default: the current time),
    at most ``chunk_rows`` per transaction, sleeping ``pause_seconds`` between chunks; logs progress every
    ~10 s and a summary. Rows inserted meanwhile are newer than the cutoff and never touched. Database errors
    propagate (what was deleted so far stays deleted; running it again resumes)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    cutoff = retention_cutoff(older_than_days, now)
    started = last_line = time.monotonic()
    deleted = chunks = 0
    while ids := _next_chunk(engine, cutoff, chunk_rows):
        deleted += _delete_ids(engine, ids)
        chunks += 1
        if time.monotonic() - last_line >= PROGRESS_EVERY_SECONDS:
            log.info("purge: %d row(s) deleted in %d chunk(s) so far", deleted, chunks)
            last_line = time.monotonic()
        if len(ids) < chunk_rows:
            break  # that was the last chunk: no need to ask again
        time.sleep(pause_seconds)
    # After the log itself, so a failure here never keeps predictions past their retention. Each of these tables
    # is absent in a log from before its feature.
    others = [
        _purge_table(engine, table, stamp, key, cutoff, chunk_rows, pause_seconds)
        if inspect(engine).has_table(table.name)
        else 0
        for table, stamp, key in (
            (prediction_explanations, "created_at", "id"),
            (prediction_outcomes, "recorded_at", "encounter_id"),
            (model_monitoring, "run_at", "id"),
        )
    ]
    result = PurgeResult(cutoff, deleted, chunks, time.monotonic() - started, *others)
    log.info(
        "purge: %d row(s) older than %s deleted in %d chunk(s), and %d explanation(s), %d outcome(s), %d monitor "
        "result(s) (%.1f s)",
        deleted,
        cutoff.isoformat(timespec="seconds"),
        chunks,
        *others,
        result.seconds,
    )
    return result


def _purge_table(
    engine: Engine, table: Table, stamp: str, key: str, cutoff: dt.datetime, chunk_rows: int, pause_seconds: float
) -> int:
    """Delete the rows of ``table`` whose ``stamp`` column is before ``cutoff``, in chunks of ``key`` values as
    the log itself; the number deleted."""
    deleted, when, ids_of = 0, table.c[stamp], table.c[key]
    while True:
        with engine.begin() as conn:
            old = select(ids_of).where(when < cutoff).order_by(ids_of).limit(chunk_rows)
            ids = [int(i) for i in conn.execute(old).scalars()]
            if ids:
                deleted += int(conn.execute(delete(table).where(ids_of.in_(ids))).rowcount)
        if len(ids) < chunk_rows:
            return deleted
        time.sleep(pause_seconds)


def _next_chunk(engine: Engine, cutoff: dt.datetime, chunk_rows: int) -> list[int]:
    """Ids of the oldest ``chunk_rows`` rows created before ``cutoff`` (one short read)."""
    query = (
        select(prediction_log.c.id)
        .where(prediction_log.c.created_at < cutoff)
        .order_by(prediction_log.c.id)
        .limit(chunk_rows)
    )
    with engine.begin() as conn:
        return [int(i) for i in conn.execute(query).scalars()]


def _delete_ids(engine: Engine, ids: list[int]) -> int:
    """Delete the log rows with these ids in one transaction; the number deleted."""
    with engine.begin() as conn:
        return int(conn.execute(delete(prediction_log).where(prediction_log.c.id.in_(ids))).rowcount)


def oldest_row_time(engine: Engine) -> dt.datetime | None:
    """When the oldest row was logged (UTC), or None for an empty log (``min(created_at)``: one index read)."""
    with engine.connect() as conn:
        oldest: dt.datetime | None = conn.execute(select(func.min(prediction_log.c.created_at))).scalar_one()
    if oldest is None:
        return None
    return oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
