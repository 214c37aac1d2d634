"""What the RAW and CLEAN stores hold: table names and the counts `readmission status` prints.

Imports SQLAlchemy only (no pandas), so the status command starts in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, inspect, text

RAW_TABLE = "raw_encounters"
LEDGER_TABLE = "raw_batches"
QUARANTINE_TABLE = "raw_quarantine"
CLEAN_TABLE = "clean_encounters"
BUILDS_TABLE = "clean_builds"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RawStatus:
    """What the RAW database holds."""

    batches_loaded: int
    batches_total: int | None  # from the ledger: the source's size when it was last loaded
    rows: int
    rows_quarantined: int
    last_loaded_at: datetime | None


@dataclass(frozen=True)
class CleanStatus:
    """The last CLEAN build, or None fields if there is none."""

    clean_rows: int
    split_rows: dict[str, int]
    built_at: datetime | None
    raw_batches: str
    split_seed: int | None = None


def _as_datetime(value: object) -> datetime | None:
    """SQLite returns timestamps (and aggregates of them) as text."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[return-value]


def raw_status(engine: Engine) -> RawStatus:
    """Counts from the ledger and the tables (zeros for a database never loaded; nothing is created)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(LEDGER_TABLE):
            return RawStatus(0, None, 0, 0, None)
        batches, last, source_rows, size = conn.execute(
            text(f"SELECT COUNT(*), MAX(loaded_at), MAX(source_rows), MAX(batch_size) FROM {LEDGER_TABLE}")
        ).one()
        rows = conn.execute(text(f"SELECT COUNT(*) FROM {RAW_TABLE}")).scalar_one()
        quarantined = conn.execute(text(f"SELECT COUNT(*) FROM {QUARANTINE_TABLE}")).scalar_one()
    total = -(-int(source_rows) // int(size)) if source_rows else None
    return RawStatus(int(batches), total, int(rows), int(quarantined), _as_datetime(last))


def clean_status(engine: Engine) -> CleanStatus:
    """Summary of the newest build recorded in the CLEAN database."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(BUILDS_TABLE):
            return CleanStatus(0, dict.fromkeys(SPLITS, 0), None, "")
        row = conn.execute(
            text(
                "SELECT built_at, clean_rows, train_rows, validation_rows, test_rows, raw_batches, split_seed "
                f"FROM {BUILDS_TABLE} ORDER BY id DESC LIMIT 1"
            )
        ).first()
    if row is None:
        return CleanStatus(0, dict.fromkeys(SPLITS, 0), None, "")
    splits = dict(zip(SPLITS, map(int, row[2:5]), strict=True))
    return CleanStatus(int(row[1]), splits, _as_datetime(row[0]), row[5], int(row[6]))
