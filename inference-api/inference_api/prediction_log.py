"""The prediction log: every served prediction, written by a writer process of its own, in batches.

A request serialises its rows (JSON, one ``bytes`` per row) and appends them to a bounded in-memory buffer
(never blocks, never fails). A sender thread ships the buffer every few milliseconds, as messages of at most
``batch_size`` rows, through a pipe to the writer process, which inserts batches of up to ``batch_size`` rows
and, while the database is down, keeps them (as the messages' bytes; only the batch being written is parsed),
backs off and tries again, logging the first failure, then at most one line per ``warn_interval_seconds``,
then one line when writes recover. The writer runs in its own process so that its work (SQL text building, driver
escaping, socket waits) never competes with request handling for the interpreter lock; that was a third
of the service's throughput.

Nothing already accepted is lost: a message stays in the sender's memory until the writer reports its
rows written (``acknowledged``), and if the writer process dies it is restarted and the unacknowledged
messages are sent again (rows carry their own ``log_id`` and the INSERT skips ids already stored, so a
resent row is never stored twice). Only when the buffer plus the unacknowledged rows reach ``queue_size``
rows or ``buffer_bytes`` serialised bytes is a row dropped, and then it is counted (metric) and logged,
never silently; so is a row that cannot be serialised (the others of its request are kept). The writer
process holds a second copy of the unacknowledged bytes, so the log's memory is at most about twice
``buffer_bytes`` (see PREDICTION_LOG_BUFFER_BYTES in settings.py). ``close`` writes what is still queued
before the process exits (SIGTERM).
"""

from __future__ import annotations

import datetime as dt
import json
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
from prometheus_client import Gauge
from sqlalchemy import Table, event, func, select
from sqlalchemy.engine import Engine

from inference_api.metrics import Metrics
from readmission.db import create_db_engine
from readmission.prediction_table import (  # shared with the purge
    ADD_ENCOUNTER_COLUMN,
    ADD_ENCOUNTER_INDEX,
    create_tables,
    ensure_log_columns,
    prediction_explanations,
    prediction_log,
)

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")  # a clean interpreter: never a fork of a threaded server
_HEADER = struct.Struct("<q")  # each message: its sequence number, then the rows as one JSON array
_CLOSE = b"close"
# ``close`` takes at most the flush time plus this: the writer's join (5 s past the flush), a kill, a join (5 s).
CLOSE_MARGIN_SECONDS = 10.0
# Slots of the shared counters the writer process updates and the sender thread reads.
_ACKED, _WRITTEN, _ERRORS = range(3)


@dataclass(frozen=True)
class WriterStatus:
    """What the writer has done so far: rows queued (buffered or sent, not yet written), written, dropped
    (buffer full or not serialisable), failed write attempts, the last error, and ``buffered_bytes``, the
    serialised size in bytes of the queued rows (what ``buffer_bytes`` bounds)."""

    queued: int
    written: int
    dropped: int
    write_errors: int
    last_error: str | None
    buffered_bytes: int = 0


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
        buffer_bytes: int = 192 * 2**20,
        warn_interval_seconds: float = 60.0,
    ) -> None:
        self.url = url
        self._metrics = metrics
        self._queue_size = queue_size
        self._buffer_bytes = buffer_bytes
        self._batch_size = batch_size
        self._retry_max = retry_max_seconds
        self._warn_interval = warn_interval_seconds
        self._send_interval = send_interval_seconds
        self._lock = threading.Lock()  # guards the buffer, the unacknowledged messages and their sizes
        self._buffer: deque[bytes] = deque()  # one serialised row each, oldest first
        self._unacked: deque[tuple[int, int, int, bytes]] = deque()  # (sequence, rows, row bytes, message)
        self._unacked_rows = 0
        self._held_bytes = 0  # serialised size of the buffered and the unacknowledged rows
        self._sequence = 0
        self._counters = _SPAWN.Array("q", 3)
        self._error: Any = _SPAWN.Array("c", 512)  # the last write error, as UTF-8
        self._seen_written = 0
        self._seen_errors = 0
        self._dropped = 0
        self._last_drop_warning = -float("inf")
        self._stop = threading.Event()
        self._flush_seconds = 20.0
        self._thread = threading.Thread(target=self._send_loop, name="prediction-log-sender", daemon=True)
        self._process: Any = None  # multiprocessing's SpawnProcess
        self._pipe: Connection | None = None
        self._next_restart = 0.0
        self._restart_backoff = 1.0
        metrics.log_queue_depth.set_function(lambda: len(self._buffer) + self._unacked_rows)
        # Defined here rather than in metrics.py: it exists only with a prediction log.
        Gauge(
            "inference_prediction_log_buffer_bytes",
            "Serialised bytes of prediction-log rows held in memory (buffered or sent, not yet written).",
            registry=metrics.registry,
        ).set_function(lambda: self._held_bytes)

    def start(self) -> None:
        """Start the writer process and the sender thread."""
        self._start_writer()
        self._thread.start()

    @property
    def writer_pid(self) -> int | None:
        """Process id of the writer process (diagnostics)."""
        return self._process.pid if self._process is not None else None

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows (JSON-serialisable dicts: str keys; str, numbers, None, datetimes, lists, dicts).

        Each row is serialised here. A row that cannot be, and the rows beyond the bounds (``queue_size``
        rows, ``buffer_bytes`` serialised bytes, counting what is buffered and what is sent but not yet
        written), are dropped, counted (``inference_prediction_log_rows_dropped_total``) and logged; the
        others are kept, in order. Never raises, never blocks on I/O.
        """
        encoded, failures = _encode(rows)
        if failures:
            self._count_drops(len(failures), f"{len(failures)} row(s) cannot be serialised ({failures[0]})", False)
        with self._lock:
            room = self._queue_size - len(self._buffer) - self._unacked_rows
            held, kept = self._held_bytes, 0
            for chunk in encoded:
                if kept >= room or held + len(chunk) > self._buffer_bytes:
                    break
                held += len(chunk)
                kept += 1
            self._buffer.extend(encoded[:kept])
            self._held_bytes = held
        if kept < len(encoded):
            self._count_drops(
                len(encoded) - kept,
                f"the buffer is full ({self._queue_size:,} rows or {self._buffer_bytes:,} bytes); the log database "
                f"is too slow or down (last error: {self._last_error()})",
                True,
            )

    def _count_drops(self, lost: int, reason: str, rate_limited: bool) -> None:
        """Count ``lost`` dropped rows and log why (if ``rate_limited``, at most one line per 5 s)."""
        with self._lock:
            self._dropped += lost
            dropped = self._dropped
        self._metrics.log_rows_dropped.inc(lost)
        now = time.monotonic()
        if not rate_limited or now - self._last_drop_warning > 5:
            if rate_limited:
                self._last_drop_warning = now
            log.error("prediction log dropped %d row(s), %d in all: %s", lost, dropped, reason)

    def status(self) -> WriterStatus:
        """Counts since start."""
        with self._counters.get_lock():
            written, errors = self._counters[_WRITTEN], self._counters[_ERRORS]
        with self._lock:
            queued, held = len(self._buffer) + self._unacked_rows, self._held_bytes
        return WriterStatus(queued, written, self._dropped, errors, self._last_error(), held)

    def close(self, flush_seconds: float = 20.0) -> WriterStatus:
        """Stop after the writer has written what is queued (for at most ``flush_seconds``)."""
        self._flush_seconds = flush_seconds
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(flush_seconds + CLOSE_MARGIN_SECONDS)
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
            args=(
                self.url,
                receiver,
                self._counters,
                self._error,
                self._batch_size,
                self._retry_max,
                self._warn_interval,
            ),
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
        with self._lock:
            messages = [message for *_, message in self._unacked]
        for message in messages:
            self._send(message)

    def _ship(self) -> None:
        """Send the buffered rows (messages of at most ``batch_size`` rows); forget what the writer
        acknowledged; update the metrics."""
        while True:
            with self._lock:
                chunks = [self._buffer.popleft() for _ in range(min(len(self._buffer), self._batch_size))]
                if not chunks:
                    break
                self._sequence += 1
                message = _HEADER.pack(self._sequence) + b"[" + b",".join(chunks) + b"]"
                self._unacked.append((self._sequence, len(chunks), sum(map(len, chunks)), message))
                self._unacked_rows += len(chunks)
            self._send(message)
        with self._counters.get_lock():
            acked, written, errors = (self._counters[i] for i in (_ACKED, _WRITTEN, _ERRORS))
        with self._lock:
            while self._unacked and self._unacked[0][0] <= acked:
                _, rows, size, _ = self._unacked.popleft()
                self._unacked_rows -= rows
                self._held_bytes -= size
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


def _encode(rows: list[dict[str, Any]]) -> tuple[list[bytes], list[str]]:
    """Each row as JSON bytes, and for each row that cannot be serialised the reason (it is left out)."""
    encoded: list[bytes] = []
    failures: list[str] = []
    for row in rows:
        try:
            encoded.append(orjson.dumps(row))
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            failures.append(f"{type(exc).__name__}: {exc}")
    return encoded, failures


# --- writer process ---------------------------------------------------------------------------------------


def _writer_main(
    url: str, pipe: Connection, counters: Any, error: Any, batch_size: int, retry_max: float, warn_interval: float
) -> None:  # runs in the writer process
    """Receive messages, insert their rows in batches, retry while the database is down, report progress."""
    # The server process decides when this one stops (it flushes first): a Ctrl-C or SIGTERM sent to
    # the whole process group must not kill it before that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = _WriterLoop(_Writer(url), pipe, counters, error, batch_size, retry_max, _RetryLog(warn_interval))
    try:
        loop.run()
    finally:
        loop.retries.stopping(len(loop.rows), len(loop.messages))
        loop.writer.dispose()


class _RetryLog:
    """The writer's failure lines: the first failure, then at most one per ``interval`` seconds (with the
    number of failures not logged since), and one line when a write succeeds again."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.failures = 0  # since the last successful write
        self.quiet = 0  # failures not logged since the last line
        self.first = self.last_line = 0.0

    def failed(self, rows: int, wait: float, text: str) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.failures == 1:
            self.first = now
        elif now - self.last_line < self.interval:
            self.quiet += 1
            return
        quiet = f" ({self.quiet} more failed attempt(s) not logged)" if self.quiet else ""
        log.warning("prediction log write of %d row(s) failed, retrying in %.1f s: %s%s", rows, wait, text, quiet)
        self.last_line, self.quiet = now, 0

    def succeeded(self) -> None:
        if self.failures:
            log.warning(
                "prediction log writes recovered after %d failed attempt(s) over %.1f s",
                self.failures,
                time.monotonic() - self.first,
            )
        self.failures = self.quiet = 0

    def stopping(self, rows: int, messages: int) -> None:
        if self.failures:
            log.error(
                "prediction log writer stopping with %d row(s) and %d message(s) unwritten after %d failed "
                "attempt(s) over %.1f s",
                rows,
                messages,
                self.failures,
                time.monotonic() - self.first,
            )


class _WriterLoop:
    """The writer process's state: messages received (kept as bytes), the parsed rows of the oldest ones
    (at most a batch plus one message), the retry schedule, and what the server process is told."""

    def __init__(
        self,
        writer: _Writer,
        pipe: Connection,
        counters: Any,
        error: Any,
        batch_size: int,
        retry_max: float,
        retries: _RetryLog,
    ) -> None:
        self.writer, self.pipe, self.counters, self.error = writer, pipe, counters, error
        self.batch_size, self.retry_max, self.retries = batch_size, retry_max, retries
        self.messages: deque[tuple[int, bytes]] = deque()  # (sequence, JSON array), oldest first
        self.rows: deque[tuple[int, dict[str, Any]]] = deque()  # (message sequence, row), oldest first
        self.last_sequence = 0
        self.deadline = float("inf")  # set when the server process asks to close (or disappears)
        self.next_try, self.backoff = 0.0, 0.5

    def run(self) -> None:
        while True:
            closing = self.deadline != float("inf")
            pending = bool(self.rows or self.messages)
            if closing and (not pending or time.monotonic() >= self.deadline):
                return
            if not closing:
                self.receive(0.2 if not pending else max(0.0, self.next_try - time.monotonic()))
            elif (pause := min(self.next_try, self.deadline) - time.monotonic()) > 0:
                time.sleep(pause)
            if (self.rows or self.messages) and time.monotonic() >= self.next_try:
                self.write_batch()

    def receive(self, wait: float) -> None:
        """Take the messages that arrive within ``wait`` seconds (or until a close request)."""
        while self.pipe.poll(wait):
            try:
                message = self.pipe.recv_bytes()
            except EOFError:  # the server process is gone without closing: write what we have, briefly
                self.deadline = time.monotonic() + 10
                return
            if message.startswith(_CLOSE):
                self.deadline = time.monotonic() + _HEADER.unpack_from(message, len(_CLOSE))[0] / 1000
                return
            self.last_sequence = _HEADER.unpack_from(message)[0]
            self.messages.append((self.last_sequence, message[_HEADER.size :]))
            wait = 0.0

    def write_batch(self) -> None:
        """Insert the oldest rows (up to a batch); on failure keep them and schedule the next try."""
        while len(self.rows) < self.batch_size and self.messages:
            sequence, body = self.messages.popleft()
            self.rows.extend((sequence, row) for row in orjson.loads(body))
        batch = [self.rows[i][1] for i in range(min(self.batch_size, len(self.rows)))]
        try:
            self.writer.write(batch)
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            self.error.value = text.encode("utf-8", "replace")[:511]
            with self.counters.get_lock():
                self.counters[_ERRORS] += 1
            self.retries.failed(len(batch), self.backoff, text)
            self.next_try, self.backoff = time.monotonic() + self.backoff, min(self.backoff * 2, self.retry_max)
            return
        for _ in batch:
            self.rows.popleft()
        first_unwritten = self.rows[0][0] if self.rows else self.messages[0][0] if self.messages else None
        with self.counters.get_lock():
            self.counters[_WRITTEN] += len(batch)
            self.counters[_ACKED] = self.last_sequence if first_unwritten is None else first_unwritten - 1
        self.retries.succeeded()
        self.next_try, self.backoff = 0.0, 0.5


class _Writer:
    """Inserts rows into the log table (created on first use), skipping ``log_id`` values already stored; the
    explanations some rows carry go to their own table afterwards, best effort (``_write_explanations``)."""

    def __init__(self, url: str, engine_factory: Callable[[str], Engine] | None = None) -> None:
        self.url = url
        self._engine_factory = engine_factory or create_log_engine
        self._engine: Engine | None = None
        self._table_ready = self._explanations_ready = False
        self._encounter_ids = True  # False while the log lacks the column and cannot be given it
        self._next_column_check = 0.0

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one transaction; raise (rows unchanged, to be retried) when that fails."""
        if self._engine is None:
            self._engine = self._engine_factory(self.url)
        if not self._table_ready:
            create_tables(self._engine, prediction_log)
            self._table_ready = True
        first = self._next_column_check == 0.0
        if (first or not self._encounter_ids) and time.monotonic() >= self._next_column_check:
            self._encounter_ids = _add_encounter_column(self._engine)
            self._next_column_check = time.monotonic() + COLUMN_RECHECK_SECONDS
        plain, explained = [], []
        for row in rows:
            if isinstance(row["created_at"], str):  # as the message carried it (RFC 3339)
                row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
            # ``rows`` stays whole for a retry; an encounter id goes only where the log has its column
            plain.append(
                {k: v for k, v in row.items() if k != "explanation" and (self._encounter_ids or k != "encounter_id")}
            )
            if row.get("explanation") is not None:
                explained.append(
                    {"log_id": row["log_id"], "created_at": row["created_at"], "explanation": row["explanation"]}
                )
        with self._engine.begin() as conn:
            conn.execute(_insert_ignoring_duplicates(conn.dialect.name, prediction_log), plain)
        if explained:
            self._write_explanations(self._engine, explained)

    def _write_explanations(self, engine: Engine, rows: list[dict[str, Any]]) -> None:
        """Insert the explanations of predictions just written. A failure here (the table cannot be created, a
        row too large) is logged and those explanations are dropped: their predictions are stored, and one bad
        explanation must never hold the prediction log back."""
        try:
            if not self._explanations_ready:
                create_tables(engine, prediction_explanations)
                self._explanations_ready = True
            with engine.begin() as conn:
                conn.execute(_insert_ignoring_duplicates(conn.dialect.name, prediction_explanations), rows)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            log.error(
                "%d explanation(s) not logged (their predictions are): %s: %s", len(rows), type(exc).__name__, text
            )

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


COLUMN_RECHECK_SECONDS = 600.0  # while the log lacks encounter_id: how often the writer tries again


def _add_encounter_column(engine: Engine) -> bool:
    """Give a log made before ``encounter_id`` existed its column (and index); False (logged: predictions are
    still written, without their encounter ids) when the database user may not. The writer tries again every
    ``COLUMN_RECHECK_SECONDS``, so the column an administrator adds is used without a restart."""
    try:
        ensure_log_columns(engine)
        return True
    except Exception as exc:
        log.error(
            "the prediction log has no encounter_id column (or its index) and this user cannot add it (%s): "
            "predictions are logged without encounter ids, so outcomes cannot be joined to them; run as an "
            "administrator: %s; %s (README, Operations); checked again every %.0f s",
            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__,
            ADD_ENCOUNTER_COLUMN,
            ADD_ENCOUNTER_INDEX,
            COLUMN_RECHECK_SECONDS,
        )
        return False


def create_log_engine(url: str) -> Engine:
    """Engine of the log database: JSON columns written by orjson; on MySQL/MariaDB each session quotes
    strings without backslash escapes.

    SQLAlchemy's JSON type writes with the standard library's ``json.dumps``, which was a sixth of the writer's
    CPU (py-spy, ``bench/api.py``); orjson writes the same values as compact JSON (``_json_text``).
    With NO_BACKSLASH_ESCAPES the driver (PyMySQL) escapes a string by doubling quotes, a C-speed
    ``str.replace``, instead of a per-character translation: the JSON of the inputs is most of each row,
    and this cuts the writer's CPU per row by more than half. Backslashes are then stored as written.
    """
    engine = create_db_engine(url, json_serializer=_json_text)
    if engine.dialect.name == "mysql":

        @event.listens_for(engine, "connect")
        def _plain_quotes(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")

    return engine


def _json_text(value: Any) -> str:
    """``value`` as compact ASCII JSON text: orjson's, or where that holds a non-ASCII character, ``json.dumps``'s
    (``\\u`` escapes, the same separators), so what is stored never depends on the table's character set.
    Raises ``TypeError`` for what orjson cannot serialise (rows reach the writer already round-tripped through
    orjson, so none do)."""
    text = orjson.dumps(value)
    return text.decode() if text.isascii() else json.dumps(value, separators=(",", ":"))


def _insert_ignoring_duplicates(dialect: str, table: Table) -> Any:
    """INSERT into ``table`` that skips rows whose ``log_id`` is already stored (idempotent retries)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table).on_conflict_do_nothing(index_elements=["log_id"])
    if dialect == "sqlite":
        return table.insert().prefix_with("OR IGNORE")
    return table.insert().prefix_with("IGNORE")  # MySQL / MariaDB


def count_rows(url: str) -> int:
    """Rows in the prediction log (for tests and operators)."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(prediction_log)).scalar_one())
    finally:
        engine.dispose()
