"""The prediction log: every served prediction, written by a writer process of its own, in batches.

A request only appends its rows to a bounded in-memory buffer (never blocks, never fails). A sender
thread ships the buffer every few milliseconds, serialised as one message, through a pipe to the writer
process, which inserts batches of up to ``batch_size`` rows and, while the database is down, keeps them,
backs off and tries again. The writer runs in its own process so that its work (SQL text building, driver
escaping, socket waits) never competes with request handling for the interpreter lock; that was a third
of the service's throughput.

Nothing already accepted is lost: a message stays in the sender's memory until the writer reports its
rows written (``acknowledged``), and if the writer process dies it is restarted and the unacknowledged
messages are sent again (rows carry their own ``log_id`` and the INSERT skips ids already stored, so a
resent row is never stored twice). Only when the buffer plus the unacknowledged rows reach
``queue_size`` is a row dropped, and then it is counted (metric) and logged, never silently. ``close``
writes what is still queued before the process exits (SIGTERM).
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
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
    # after COMMIT), or a message resent to a restarted writer, skips the rows already there.
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

_SPAWN = multiprocessing.get_context("spawn")  # a clean interpreter: never a fork of a threaded server
_HEADER = struct.Struct("<q")  # each message: its sequence number, then the rows as one JSON array
_CLOSE = b"close"
# Slots of the shared counters the writer process updates and the sender thread reads.
_ACKED, _WRITTEN, _ERRORS = range(3)


@dataclass(frozen=True)
class WriterStatus:
    """What the writer has done so far."""

    queued: int
    written: int
    dropped: int
    write_errors: int
    last_error: str | None


class PredictionLog:
    """Bounded buffer + sender thread + writer process. ``submit`` is safe from any thread, never blocks."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        queue_size: int = 100_000,
        batch_size: int = 500,
        retry_max_seconds: float = 10.0,
        send_interval_seconds: float = 0.02,
    ) -> None:
        self.url = url
        self._metrics = metrics
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._retry_max = retry_max_seconds
        self._send_interval = send_interval_seconds
        self._buffer: deque[dict[str, Any]] = deque()
        self._unacked: deque[tuple[int, int, bytes]] = deque()  # (sequence, rows, message) not yet written
        self._unacked_rows = 0
        self._sequence = 0
        self._counters = _SPAWN.Array("q", 3)
        self._error: Any = _SPAWN.Array("c", 512)  # the last write error, as UTF-8
        self._seen_written = 0
        self._seen_errors = 0
        self._dropped = 0
        self._last_drop_warning = 0.0
        self._stop = threading.Event()
        self._flush_seconds = 20.0
        self._thread = threading.Thread(target=self._send_loop, name="prediction-log-sender", daemon=True)
        self._process: Any = None  # multiprocessing's SpawnProcess
        self._pipe: Connection | None = None
        self._next_restart = 0.0
        self._restart_backoff = 1.0
        metrics.log_queue_depth.set_function(lambda: len(self._buffer) + self._unacked_rows)

    def start(self) -> None:
        """Start the writer process and the sender thread."""
        self._start_writer()
        self._thread.start()

    @property
    def writer_pid(self) -> int | None:
        """Process id of the writer process (diagnostics)."""
        return self._process.pid if self._process is not None else None

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows for writing; rows that do not fit are dropped and counted."""
        room = self._queue_size - len(self._buffer) - self._unacked_rows
        if len(rows) <= room:
            self._buffer.extend(rows)
            return
        kept = max(room, 0)
        self._buffer.extend(rows[:kept])
        lost = len(rows) - kept
        self._dropped += lost
        self._metrics.log_rows_dropped.inc(lost)
        now = time.monotonic()
        if now - self._last_drop_warning > 5:
            self._last_drop_warning = now
            log.error(
                "prediction log queue full (%d rows): dropped %d row(s), %d in all; the log database is too slow "
                "or down (last error: %s)",
                self._queue_size,
                lost,
                self._dropped,
                self._last_error(),
            )

    def status(self) -> WriterStatus:
        """Counts since start."""
        with self._counters.get_lock():
            written, errors = self._counters[_WRITTEN], self._counters[_ERRORS]
        queued = len(self._buffer) + self._unacked_rows
        return WriterStatus(queued, written, self._dropped, errors, self._last_error())

    def close(self, flush_seconds: float = 20.0) -> WriterStatus:
        """Stop after the writer has written what is queued (for at most ``flush_seconds``)."""
        self._flush_seconds = flush_seconds
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(flush_seconds + 10)
        status = self.status()
        if status.queued:
            log.error("prediction log closed with %d row(s) unwritten (database unreachable)", status.queued)
        else:
            log.info("prediction log flushed: %d row(s) written in all", status.written)
        return status

    # --- sender thread ---------------------------------------------------------------------------------------

    def _last_error(self) -> str | None:
        return self._error.value.decode("utf-8", "replace") or None

    def _start_writer(self) -> None:
        receiver, self._pipe = _SPAWN.Pipe(duplex=False)
        self._process = _SPAWN.Process(
            target=_writer_main,
            args=(self.url, receiver, self._counters, self._error, self._batch_size, self._retry_max),
            name="prediction-log-writer",
            daemon=True,
        )
        self._process.start()
        receiver.close()

    def _send(self, message: bytes) -> None:
        """Send one message; if the writer is gone, the next tick restarts it and resends what is unwritten."""
        assert self._pipe is not None
        try:
            self._pipe.send_bytes(message)
        except OSError as exc:
            log.debug("prediction-log writer unreachable: %s", exc)

    def _restart_writer(self) -> None:
        log.error(
            "prediction-log writer process exited (code %s); restarting it and resending %d unwritten row(s)",
            self._process.exitcode,
            self._unacked_rows,
        )
        with self._counters.get_lock():
            self._counters[_ERRORS] += 1
        self._process.join(1)
        if self._pipe is not None:
            self._pipe.close()
        self._start_writer()
        for _, _, message in list(self._unacked):
            self._send(message)

    def _ship(self) -> None:
        """Send the buffered rows as one message; forget what the writer acknowledged; update the metrics."""
        if self._buffer:
            rows = [self._buffer.popleft() for _ in range(len(self._buffer))]
            self._sequence += 1
            message = _HEADER.pack(self._sequence) + orjson.dumps(rows)
            self._unacked.append((self._sequence, len(rows), message))
            self._unacked_rows += len(rows)
            self._send(message)
        with self._counters.get_lock():
            acked, written, errors = (self._counters[i] for i in (_ACKED, _WRITTEN, _ERRORS))
        while self._unacked and self._unacked[0][0] <= acked:
            self._unacked_rows -= self._unacked.popleft()[1]
        if written > self._seen_written:
            self._metrics.log_rows_written.inc(written - self._seen_written)
            self._seen_written = written
            self._restart_backoff = 1.0
        if errors > self._seen_errors:
            self._metrics.log_write_errors.inc(errors - self._seen_errors)
            self._seen_errors = errors

    def _tick(self) -> None:
        if not self._process.is_alive():
            if time.monotonic() < self._next_restart:
                return
            self._next_restart = time.monotonic() + self._restart_backoff
            self._restart_backoff = min(self._restart_backoff * 2, self._retry_max)
            self._restart_writer()
        self._ship()

    def _send_loop(self) -> None:
        while not self._stop.wait(self._send_interval):
            try:
                self._tick()
            except Exception:
                log.exception("prediction-log sender failed; retrying")
        try:
            self._drain()
        except Exception:
            log.exception("prediction-log flush failed")

    def _drain(self) -> None:
        """Ship what is left, ask the writer to write it within the flush window, then stop it."""
        deadline = time.monotonic() + self._flush_seconds
        close = _CLOSE + _HEADER.pack(int(self._flush_seconds * 1000))
        self._ship()
        self._send(close)
        while self._unacked and time.monotonic() < deadline:
            if not self._process.is_alive():
                self._restart_writer()
                self._send(_CLOSE + _HEADER.pack(int(max(0.0, deadline - time.monotonic()) * 1000)))
            time.sleep(0.05)
            self._ship()
        self._process.join(max(0.0, deadline - time.monotonic()) + 5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._ship()
        if self._pipe is not None:
            self._pipe.close()


# --- writer process ---------------------------------------------------------------------------------------


def _writer_main(
    url: str, pipe: Connection, counters: Any, error: Any, batch_size: int, retry_max: float
) -> None:  # runs in the writer process
    """Receive messages, insert their rows in batches, retry while the database is down, report progress."""
    # The server process decides when this one stops (it flushes first): a Ctrl-C or SIGTERM sent to
    # the whole process group must not kill it before that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    writer = _Writer(url)
    pending: deque[tuple[int, dict[str, Any]]] = deque()  # (message sequence, row), oldest first
    last_sequence = 0
    deadline = float("inf")  # set when the server process asks to close (or disappears)
    next_try, backoff = 0.0, 0.5
    while True:
        closing = deadline != float("inf")
        if closing and (not pending or time.monotonic() >= deadline):
            break
        if not closing:
            wait = 0.2 if not pending else max(0.0, next_try - time.monotonic())
            while pipe.poll(wait):
                try:
                    message = pipe.recv_bytes()
                except EOFError:  # the server process is gone without closing: write what we have, briefly
                    deadline = time.monotonic() + 10
                    break
                if message.startswith(_CLOSE):
                    deadline = time.monotonic() + _HEADER.unpack_from(message, len(_CLOSE))[0] / 1000
                    break
                last_sequence = _HEADER.unpack_from(message)[0]
                pending.extend((last_sequence, row) for row in orjson.loads(message[_HEADER.size :]))
                wait = 0.0
        elif (pause := min(next_try, deadline) - time.monotonic()) > 0:
            time.sleep(pause)
        if not pending or time.monotonic() < next_try:
            continue
        batch = [pending[i][1] for i in range(min(batch_size, len(pending)))]
        try:
            writer.write(batch)
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            error.value = text.encode("utf-8", "replace")[:511]
            with counters.get_lock():
                counters[_ERRORS] += 1
            log.warning("prediction log write of %d row(s) failed, retrying in %.1f s: %s", len(batch), backoff, text)
            next_try, backoff = time.monotonic() + backoff, min(backoff * 2, retry_max)
            continue
        for _ in batch:
            pending.popleft()
        with counters.get_lock():
            counters[_WRITTEN] += len(batch)
            counters[_ACKED] = pending[0][0] - 1 if pending else last_sequence
        next_try, backoff = 0.0, 0.5
    writer.dispose()


class _Writer:
    """Inserts rows into the log table (created on first use), skipping ``log_id`` values already stored."""

    def __init__(self, url: str, engine_factory: Callable[[str], Engine] | None = None) -> None:
        self.url = url
        self._engine_factory = engine_factory or create_log_engine
        self._engine: Engine | None = None
        self._table_ready = False

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        if not self._table_ready:
            _metadata.create_all(self._engine, checkfirst=True)
            self._table_ready = True
        for row in rows:
            if isinstance(row["created_at"], str):  # as the message carried it (RFC 3339)
                row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
        with self._engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(conn.dialect.name), rows)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


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
