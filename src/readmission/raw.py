"""RAW store: the source file loaded as it is, in fixed-size batches, with a ledger and a quarantine.

A batch is a fixed slice of the source's data lines (batch k = lines k*size .. (k+1)*size-1). Each
batch is written in one transaction together with its ledger row, so a run killed anywhere leaves
whole batches only and the next run resumes at the first batch missing from the ledger.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from readmission import schema
from readmission.csvfile import parse_records, read_records
from readmission.db import copy_csv_into, insert_rows, is_postgres
from readmission.errors import LedgerConflictError
from readmission.names import DEFAULT_BATCH_SIZE
from readmission.store_status import LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from readmission.validation import check_header, contract_violations, repeated_ids

_ID_LOOKUP_CHUNK = 5_000
_ADVISORY_LOCK_KEY = 7_301_996  # serialises concurrent loaders of one PostgreSQL RAW database

metadata = MetaData()


def _raw_column(col: schema.Column) -> Column:  # type: ignore[type-arg]
    if col.kind is schema.Kind.IDENTIFIER:
        return Column(col.name, BigInteger, primary_key=col.name == "encounter_id", autoincrement=False, nullable=False)
    return Column(col.name, Integer if col.is_integer else Text, nullable=False)


raw_encounters = Table(
    RAW_TABLE,
    metadata,
    *(_raw_column(c) for c in schema.COLUMNS),
    Column("batch_number", Integer, nullable=False, index=True),
)
raw_batches = Table(
    LEDGER_TABLE,
    metadata,
    Column("batch_number", Integer, primary_key=True, autoincrement=False),
    Column("first_line", Integer, nullable=False),  # 1-based data line of the source (header excluded)
    Column("last_line", Integer, nullable=False),
    Column("rows_in_batch", Integer, nullable=False),
    Column("rows_loaded", Integer, nullable=False),
    Column("rows_quarantined", Integer, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("source_rows", Integer, nullable=False),
    Column("checksum", String(64), nullable=False),  # SHA-256 of the batch's source lines
    Column("source_sha256", String(64), nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
)
raw_quarantine = Table(
    QUARANTINE_TABLE,
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_number", Integer, nullable=False, index=True),
    Column("source_line", Integer, nullable=False),  # the line of the file where the record starts (header: 1)
    Column("encounter_id", Text),
    Column("reason", Text, nullable=False),
    Column("raw_record", Text, nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class SourceFile:
    """The source's header and data lines, cut into batches."""

    path: Path
    header: list[str]
    lines: list[bytes]  # canonical records (readmission.csvfile), blank lines left out
    line_numbers: list[int]  # the file's line where each record starts (the page reports the same numbers)
    batch_size: int
    sha256: str

    @classmethod
    def read(cls, path: Path, batch_size: int = DEFAULT_BATCH_SIZE) -> SourceFile:
        """Read ``path`` and check its header against the contract."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        data = Path(path).read_bytes()
        records = read_records(data, str(path))
        check_header(records.header, str(path))
        digest = hashlib.sha256(data).hexdigest()
        return cls(Path(path), records.header, records.lines, records.line_numbers, batch_size, digest)

    @property
    def batch_count(self) -> int:
        """Number of batches, the last one possibly short."""
        return -(-len(self.lines) // self.batch_size)

    def batch_lines(self, number: int) -> list[bytes]:
        """Data lines of batch ``number`` (0-based)."""
        return self.lines[number * self.batch_size : (number + 1) * self.batch_size]

    def batch_checksum(self, number: int) -> str:
        """SHA-256 of the batch's lines, independent of line endings."""
        return hashlib.sha256(b"\n".join(self.batch_lines(number))).hexdigest()


@dataclass(frozen=True)
class BatchResult:
    """What loading one batch did."""

    batch_number: int
    rows_loaded: int
    rows_quarantined: int
    seconds: float


@dataclass
class LoadReport:
    """What one call of :func:`load_raw_batches` did."""

    batches_total: int
    batches_already_loaded: int
    loaded: list[BatchResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_loaded(self) -> int:
        """Rows written by this call."""
        return sum(b.rows_loaded for b in self.loaded)

    @property
    def rows_quarantined(self) -> int:
        """Rows set aside by this call."""
        return sum(b.rows_quarantined for b in self.loaded)

    @property
    def batches_pending(self) -> int:
        """Batches of the source still not loaded after this call."""
        return self.batches_total - self.batches_already_loaded - len(self.loaded)


def create_raw_tables(engine: Engine) -> None:
    """Create the RAW tables if they do not exist (idempotent)."""
    metadata.create_all(engine)


def load_raw_batches(
    engine: Engine,
    source: SourceFile,
    *,
    max_batches: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> LoadReport:
    """Load the pending batches of ``source`` (at most ``max_batches``) into the RAW database.

    Batches already in the ledger are skipped after checking they match the source; rows that break
    the contract go to the quarantine table with their reason.
    """
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be 0 or more, got {max_batches}")
    started = time.perf_counter()
    create_raw_tables(engine)
    loaded = _check_ledger(engine, source)
    pending = [k for k in range(source.batch_count) if k not in loaded]
    if max_batches is not None:
        pending = pending[:max_batches]
    report = LoadReport(source.batch_count, len(loaded))
    # Validate batch k+1 on a second thread while the database ingests batch k (parsing releases the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate") as pool:
        upcoming = [pool.submit(_validate_batch, source.header, source.batch_lines(k)) for k in pending[:1]]
        for position, number in enumerate(pending):
            checked = upcoming.pop().result()
            if position + 1 < len(pending):
                upcoming.append(pool.submit(_validate_batch, source.header, source.batch_lines(pending[position + 1])))
            result = _load_batch(engine, source, number, checked)
            if result is None:  # another loader committed it meanwhile
                report.batches_already_loaded += 1
                continue
            report.loaded.append(result)
            if on_batch:
                on_batch(result)
    report.seconds = time.perf_counter() - started
    return report


def _check_ledger(engine: Engine, source: SourceFile) -> set[int]:
    with engine.connect() as conn:
        rows = conn.execute(select(raw_batches.c.batch_number, raw_batches.c.batch_size, raw_batches.c.checksum)).all()
    for number, size, checksum in rows:
        if size != source.batch_size:
            raise LedgerConflictError(
                f"the RAW database was loaded in batches of {size} rows, not {source.batch_size}: "
                f"rerun with --batch-size {size} (or BATCH_SIZE={size}), or load into an empty database."
            )
        if number >= source.batch_count or source.batch_checksum(number) != checksum:
            raise LedgerConflictError(
                f"batch {number} in the RAW database differs from the same lines of {source.path}: the file "
                "is not the one loaded before. Use the original file, or load into an empty database."
            )
    return {number for number, _, _ in rows}


def _existing_ids(conn: Connection, ids: list[int]) -> dict[int, int]:
    """encounter_id -> batch_number for the ``ids`` already in the RAW table."""
    if is_postgres(conn):  # one round trip with an array parameter
        query = text(f"SELECT encounter_id, batch_number FROM {RAW_TABLE} WHERE encounter_id = ANY(:ids)")
        return {int(i): int(b) for i, b in conn.execute(query, {"ids": ids})}
    found: dict[int, int] = {}
    for start in range(0, len(ids), _ID_LOOKUP_CHUNK):
        chunk = select(raw_encounters.c.encounter_id, raw_encounters.c.batch_number).where(
            raw_encounters.c.encounter_id.in_(ids[start : start + _ID_LOOKUP_CHUNK])
        )
        found.update({int(i): int(b) for i, b in conn.execute(chunk)})
    return found


def _validate_batch(header: list[str], lines: list[bytes]) -> tuple[pd.DataFrame, dict[int, str]]:
    """The parsed well-formed lines (index = position in ``lines``) and reasons for the rest."""
    frame, reasons = parse_records(header, lines)
    violations = contract_violations(frame)
    reasons.update({int(i): str(r) for i, r in violations[violations != ""].items()})
    frame = frame.drop(index=[i for i in reasons if i in frame.index])
    repeated = repeated_ids(frame, "batch")
    reasons.update({i: found[0] for i, found in repeated.items()})
    return frame.drop(index=list(repeated)), reasons


def _load_batch(
    engine: Engine, source: SourceFile, number: int, checked: tuple[pd.DataFrame, dict[int, str]]
) -> BatchResult | None:
    """Write one validated batch with its ledger row; None if the ledger already has it."""
    started = time.perf_counter()
    try:  # fast path: encounter ids new to the database, as they are on every normal run
        return _write_batch(engine, source, number, *checked, started, look_up_ids=False)
    except IntegrityError:  # an id of this batch is already stored: find which and quarantine them
        return _write_batch(engine, source, number, *checked, started, look_up_ids=True)


def _write_batch(
    engine: Engine,
    source: SourceFile,
    number: int,
    frame: pd.DataFrame,
    reasons: dict[int, str],
    started: float,
    *,
    look_up_ids: bool,
) -> BatchResult | None:
    lines = source.batch_lines(number)
    reasons = dict(reasons)
    first_line = number * source.batch_size + 1
    with engine.begin() as conn:
        if is_postgres(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        already = conn.execute(select(raw_batches.c.batch_number).where(raw_batches.c.batch_number == number))
        if already.first() is not None:
            return None
        if look_up_ids:
            ids = frame["encounter_id"].astype("int64")
            clashes = _existing_ids(conn, ids.tolist())
            for i in frame.index[ids.isin(list(clashes)).to_numpy()]:
                eid = int(frame.at[i, "encounter_id"])
                reasons[int(i)] = f"encounter_id {eid} is already loaded (batch {clashes[eid]})"
            frame = frame.drop(index=[i for i in frame.index if i in reasons])
        _write_rows(conn, lines, frame, number)
        now = datetime.now(UTC)
        if reasons:
            conn.execute(
                raw_quarantine.insert(),
                [
                    {
                        "batch_number": number,
                        "source_line": source.line_numbers[number * source.batch_size + i],
                        "reason": reason,
                        "encounter_id": _field(lines[i], source.header.index("encounter_id")),
                        "raw_record": lines[i].decode("utf-8", "replace"),
                        "quarantined_at": now,
                    }
                    for i, reason in sorted(reasons.items())
                ],
            )
        conn.execute(
            raw_batches.insert().values(
                batch_number=number,
                first_line=first_line,
                last_line=first_line + len(lines) - 1,
                rows_in_batch=len(lines),
                rows_loaded=len(frame),
                rows_quarantined=len(reasons),
                batch_size=source.batch_size,
                source_rows=len(source.lines),
                checksum=source.batch_checksum(number),
                source_sha256=source.sha256,
                loaded_at=now,
            )
        )
    return BatchResult(number, len(frame), len(reasons), time.perf_counter() - started)


def _field(line: bytes, position: int) -> str | None:
    """The text of field ``position`` of a canonical record (None when the record is shorter)."""
    fields = next(csv.reader([line.decode("utf-8", "replace")]))
    return fields[position] if position < len(fields) else None


def _write_rows(conn: Connection, lines: list[bytes], frame: pd.DataFrame, number: int) -> None:
    columns = [*frame.columns, "batch_number"]
    if is_postgres(conn):
        # The validated source lines go to COPY as they are: no re-encoding of 50 columns in Python.
        suffix = b",%d\n" % number
        copy_csv_into(conn, RAW_TABLE, columns, b"".join(lines[i] + suffix for i in frame.index))
        return
    typed = frame.astype({c.name: "int64" for c in schema.COLUMNS if c.is_integer}).astype(object)
    typed["batch_number"] = number
    insert_rows(conn, RAW_TABLE, columns, list(typed.itertuples(index=False, name=None)))
