"""The prediction log: every served prediction, written by a background thread in batches.

A request only puts a row on a bounded in-memory queue (never blocks, never fails). The writer thread
takes up to ``batch_size`` rows at a time and inserts them in one statement; while the database is down it
keeps the batch, backs off and tries again, so nothing already queued is lost. Only when the queue is full
is a row dropped, and then it is counted (metric) and logged, never silently. ``close`` writes what is
still queued before the process exits (SIGTERM).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from inference_api.metrics import Metrics
from readmission.db import create_db_engine

log = logging.getLogger(__name__)

TABLE_NAME = "prediction_log"
_metadata = MetaData()
prediction_log = Table(
    TABLE_NAME,
    _metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # Made by the service for each row: a retried INSERT whose first attempt did commit (connection lost
    # after COMMIT) skips the rows already there instead of writing them twice.
    Column("log_id", String(32), nullable=False, unique=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("item", Integer, nullable=False),  # position in a batch request (0 for a single prediction)
    # UTC; microseconds kept on MySQL too (its DATETIME drops fractions unless told otherwise).
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


@dataclass(frozen=True)
class WriterStatus:
    """What the writer has done so far."""

    queued: int
    written: int
    dropped: int
    write_errors: int
    last_error: str | None


class PredictionLog:
    """Bounded queue + one writer thread. ``submit`` is safe from any thread and never blocks."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        queue_size: int = 100_000,
        batch_size: int = 500,
        retry_max_seconds: float = 10.0,
        engine_factory: Callable[[str], Engine] | None = None,
    ) -> None:
        self.url = url
        self._metrics = metrics
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._retry_max = retry_max_seconds
        self._engine_factory = engine_factory or create_log_engine
        self._engine: Engine | None = None
        self._table_ready = False
        self._stop = threading.Event()
        self._flush_deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._written = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_drop_warning = 0.0
        self._pending = 0  # rows taken off the queue but not yet written
        metrics.log_queue_depth.set_function(self._queue.qsize)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows for writing; rows that do not fit are dropped and counted."""
        for i, row in enumerate(rows):
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                lost = len(rows) - i
                self._dropped += lost
                self._metrics.log_rows_dropped.inc(lost)
                now = time.monotonic()
                if now - self._last_drop_warning > 5:
                    self._last_drop_warning = now
                    log.error(
                        "prediction log queue full (%d rows): dropped %d row(s), %d in all; the log database "
                        "is too slow or down (last error: %s)",
                        self._queue.maxsize,
                        lost,
                        self._dropped,
                        self._last_error,
                    )
                return

    def status(self) -> WriterStatus:
        """Counts since start."""
        queued = self._queue.qsize() + self._pending
        return WriterStatus(queued, self._written, self._dropped, self._errors, self._last_error)

    def close(self, flush_seconds: float = 20.0) -> WriterStatus:
        """Stop accepting work after writing what is queued (for at most ``flush_seconds``)."""
        self._flush_deadline = time.monotonic() + flush_seconds
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(flush_seconds + 5)
        status = self.status()
        if status.queued:
            log.error("prediction log closed with %d row(s) unwritten (database unreachable)", status.queued)
        else:
            log.info("prediction log flushed: %d row(s) written in all", status.written)
        if self._engine is not None:
            self._engine.dispose()
        return status

    # --- writer thread -------------------------------------------------------------------------------------

    def _take(self, pending: list[dict[str, Any]]) -> None:
        """Fill ``pending`` up to the batch size, waiting briefly for the first row."""
        if not pending:
            try:
                pending.append(self._queue.get(timeout=0.2))
            except queue.Empty:
                return
        while len(pending) < self._batch_size:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        if not self._table_ready:
            _metadata.create_all(self._engine, checkfirst=True)
            self._table_ready = True
        with self._engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(conn.dialect.name), rows)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        backoff = 0.5
        while True:
            self._take(pending)
            self._pending = len(pending)
            stopping = self._stop.is_set()
            if not pending:
                if stopping:
                    return
                continue
            try:
                self._write(pending)
            except Exception as exc:
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                self._metrics.log_write_errors.inc()
                log.warning("prediction log write of %d row(s) failed, retrying: %s", len(pending), self._last_error)
                if stopping and time.monotonic() >= self._flush_deadline:
                    return
                self._stop.wait(min(backoff, max(0.0, self._flush_deadline - time.monotonic())))
                if self._stop.is_set():
                    time.sleep(min(backoff, 1.0))  # keep retrying during the flush window, not in a tight loop
                backoff = min(backoff * 2, self._retry_max)
                continue
            self._written += len(pending)
            self._metrics.log_rows_written.inc(len(pending))
            pending = []
            self._pending = 0
            backoff = 0.5


def create_log_engine(url: str) -> Engine:
    """Engine of the log database; on MySQL/MariaDB each session quotes strings without backslash escapes.

    With NO_BACKSLASH_ESCAPES the driver (PyMySQL) escapes a string by doubling quotes, a C-speed
    ``str.replace``, instead of a per-character translation: the JSON of the inputs is most of each row,
    and this cuts the writer's CPU per row by more than half. Backslashes are then stored as written.
    """
    engine = create_db_engine(url)
    if engine.dialect.name == "mysql":

        @event.listens_for(engine, "connect")
        def _plain_quotes(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")

    return engine


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """INSERT that skips rows whose ``log_id`` is already stored (idempotent retries)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(prediction_log).on_conflict_do_nothing(index_elements=["log_id"])
    if dialect == "sqlite":
        return prediction_log.insert().prefix_with("OR IGNORE")
    return prediction_log.insert().prefix_with("IGNORE")  # MySQL / MariaDB


def count_rows(url: str) -> int:
    """Rows in the prediction log (for tests and operators)."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(prediction_log)).scalar_one())
    finally:
        engine.dispose()
