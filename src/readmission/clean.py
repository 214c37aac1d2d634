"""CLEAN store: model-ready encounters with a deterministic patient-grouped split.

Built from the whole RAW table each time (a full, atomic rebuild), so it always matches what RAW holds. A
large RAW table is cleaned in patient partitions (``patient_nbr % parts``), each read, cleaned and written
in turn inside the one transaction: every feature of a row depends on its own patient's rows only, so the
table is the same as one pass would make, and memory is bounded by the partition, not the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Column, DateTime, Engine, Integer, MetaData, String, Table, Text, inspect
from sqlalchemy.engine import Connection

from readmission import schema
from readmission.db import quote, read_query, write_frame
from readmission.errors import EmptyStoreError
from readmission.store_status import BUILDS_TABLE, CLEAN_TABLE, RAW_TABLE, SPLITS

# ICD-9 chapters used by Strack et al. (2014), the paper that published this data set.
DIAGNOSIS_GROUPS = (
    "circulatory",
    "respiratory",
    "digestive",
    "diabetes",
    "injury",
    "musculoskeletal",
    "genitourinary",
    "neoplasms",
    "other",
)
_NUMERIC_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("circulatory", 390, 460),
    ("circulatory", 785, 786),
    ("respiratory", 460, 520),
    ("respiratory", 786, 787),
    ("digestive", 520, 580),
    ("digestive", 787, 788),
    ("diabetes", 250, 251),
    ("injury", 800, 1000),
    ("musculoskeletal", 710, 740),
    ("genitourinary", 580, 630),
    ("genitourinary", 788, 789),
    ("neoplasms", 140, 240),
)


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of patients per split and the seed that assigns them."""

    seed: int = 42
    validation: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        if not (0 < self.validation < 1 and 0 < self.test < 1 and self.validation + self.test < 1):
            raise ValueError(
                f"split fractions must be in (0, 1) and leave room for training: validation={self.validation}, "
                f"test={self.test}"
            )


def diagnosis_group(codes: pd.Series) -> pd.Series:
    """Clinical group of each ICD-9 code (None where the code is missing)."""
    text_codes = codes.astype("string")
    # V and E codes are not numbers: they stay "other" (NaN compares false once NA is filled).
    numeric = pd.to_numeric(text_codes, errors="coerce").astype("float64")
    groups = pd.Series("other", index=codes.index, dtype="string")
    for name, low, high in _NUMERIC_GROUPS:
        groups = groups.mask((numeric >= low) & (numeric < high), name)
    return groups.mask(text_codes.isna(), None)


def diagnosis_group_of(code: str | None) -> str | None:
    """``diagnosis_group`` of a single code (for the serving path, which works row by row)."""
    if code is None:
        return None
    try:
        number = float(code)
    except ValueError:
        return "other"
    group = "other"
    for name, low, high in _NUMERIC_GROUPS:
        if low <= number < high:
            group = name
    return group


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mix: stable across platforms and library versions, unlike hash()."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def patient_draw(patient_nbr: pd.Series, seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per row that depends only on (seed, patient_nbr): every row of a patient gets
    the same draw, on any machine, however the rows arrive (splitmix64, Steele et al. 2014)."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(patient_nbr.to_numpy(dtype=np.uint64) ^ _splitmix64(np.array([seed]))[0])
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(patient_nbr: pd.Series, spec: SplitSpec) -> pd.Series:
    """Split of each row, decided by its patient alone, so no patient is on two sides.

    A patient keeps its split when more batches arrive, because the draw depends only on
    (seed, patient_nbr).
    """
    unit = patient_draw(patient_nbr, spec.seed)
    labels = np.where(unit < spec.test, "test", np.where(unit < spec.test + spec.validation, "validation", "train"))
    return pd.Series(labels, index=patient_nbr.index, dtype="string")


def clean_frame(raw: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """Model-ready rows from RAW rows: missing as null, deaths/hospice out, diagnosis groups, history, split."""
    frame = raw.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    # History counts only a patient's earlier encounters (encounter_id order); later ones would leak.
    by_patient = frame.groupby("patient_nbr", sort=False)
    history = {schema.PRIOR_ENCOUNTERS: by_patient.cumcount()}
    for count_name, previous_name, outcome in (
        ("prior_readmissions", "previous_readmission", frame[schema.TARGET].ne("NO")),
        ("prior_early_readmissions", "previous_early_readmission", frame[schema.TARGET].eq(schema.POSITIVE_LABEL)),
    ):
        as_int = outcome.astype("int64").groupby(frame["patient_nbr"], sort=False)
        history[count_name] = as_int.cumsum() - outcome.astype("int64")  # earlier rows only
        history[previous_name] = as_int.shift(1, fill_value=0)  # the previous row only
    history["previous_number_inpatient"] = by_patient["number_inpatient"].shift(1, fill_value=0)
    for col in schema.COLUMNS:
        if col.may_be_missing:
            frame[col.name] = frame[col.name].mask(frame[col.name].eq(schema.MISSING))
    for name, values in history.items():
        frame[name] = values.astype("int64")
    frame = frame[~frame["discharge_disposition_id"].isin(sorted(schema.DEATH_OR_HOSPICE_DISCHARGE_IDS))]
    for n in (1, 2, 3):
        frame[f"diag_{n}_group"] = diagnosis_group(frame[f"diag_{n}"])
    frame["split"] = assign_split(frame["patient_nbr"], spec)
    return frame.reset_index(drop=True)


def _clean_table(columns: list[str], integer_columns: set[str]) -> Table:
    table_metadata = MetaData()
    return Table(
        CLEAN_TABLE,
        table_metadata,
        *(
            Column(
                name,
                BigInteger if name in _IDENTIFIERS else Integer if name in integer_columns else Text,
                primary_key=name == "encounter_id",
                autoincrement=False,
            )
            for name in columns
        ),
    )


builds_metadata = MetaData()
clean_builds = Table(
    BUILDS_TABLE,
    builds_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("built_at", DateTime(timezone=True), nullable=False),
    Column("raw_rows", Integer, nullable=False),
    Column("excluded_rows", Integer, nullable=False),
    Column("clean_rows", Integer, nullable=False),
    Column("raw_batches", Text, nullable=False),  # comma-separated batch numbers (lineage)
    Column("split_seed", Integer, nullable=False),
    Column("split_fractions", String(64), nullable=False),
    Column("train_rows", Integer, nullable=False),
    Column("validation_rows", Integer, nullable=False),
    Column("test_rows", Integer, nullable=False),
)

_INTEGER_COLUMNS = {c.name for c in schema.COLUMNS if c.is_integer} | {*schema.HISTORY_FEATURE_NAMES, "batch_number"}
_IDENTIFIERS = {c.name for c in schema.COLUMNS if c.kind is schema.Kind.IDENTIFIER}  # 64-bit, as in RAW
_RAW_DTYPES = {c.name: ("int64" if c.is_integer else "string") for c in schema.COLUMNS}
_CLEAN_COLUMNS = [  # the CLEAN table's columns, in ``clean_frame``'s order
    *schema.COLUMN_NAMES,
    "batch_number",
    schema.PRIOR_ENCOUNTERS,
    "prior_readmissions",
    "previous_readmission",
    "prior_early_readmissions",
    "previous_early_readmission",
    "previous_number_inpatient",
    *(f"diag_{n}_group" for n in (1, 2, 3)),
    "split",
]


@dataclass(frozen=True)
class CleanReport:
    """What a CLEAN rebuild did."""

    raw_rows: int
    excluded_rows: int
    clean_rows: int
    split_rows: dict[str, int]
    split_patients: dict[str, int]
    raw_batches: list[int]
    seconds: float


CLEAN_PARTITION_ROWS = 150_000  # RAW rows cleaned at once, about (the UCI file, 101,766 rows, is one partition)


_NO_RAW_TABLE = "the RAW database has no data yet: run `readmission load-raw` first."
_NO_RAW_ROWS = "the RAW database has no rows yet: run `readmission load-raw` first."


def read_raw(raw_engine: Engine) -> pd.DataFrame:
    """Every RAW row: contract columns (integers as int64, the rest as strings) and ``batch_number``.

    Raises ``EmptyStoreError`` (with the command to run) when RAW has no table or no rows.
    """
    with raw_engine.connect() as conn:
        _require_raw_table(conn)
        raw = _raw_rows(conn)
    if raw.empty:
        raise EmptyStoreError(_NO_RAW_ROWS)
    return raw


def _require_raw_table(conn: Connection) -> None:
    if not inspect(conn).has_table(RAW_TABLE):
        raise EmptyStoreError(_NO_RAW_TABLE)


def _raw_rows(conn: Connection, partition: tuple[int, int] | None = None) -> pd.DataFrame:
    """RAW rows; with ``partition`` = (k, parts), those of the patients with ``patient_nbr % parts == k``."""
    cols = ", ".join(quote(conn, c) for c in [*schema.COLUMN_NAMES, "batch_number"])
    k, parts = partition or (0, 1)
    where = f" WHERE patient_nbr % {int(parts)} = {int(k)}" if parts > 1 else ""
    return read_query(conn, f"SELECT {cols} FROM {RAW_TABLE}{where}", {**_RAW_DTYPES, "batch_number": "int64"})


@contextmanager
def _raw_snapshot(raw_engine: Engine) -> Iterator[Connection]:
    """One read transaction over RAW, so that the count and every partition see the same rows while a loader
    writes (REPEATABLE READ on PostgreSQL; on SQLite in WAL mode a read transaction is a snapshot)."""
    options = {"isolation_level": "REPEATABLE READ"} if raw_engine.dialect.name == "postgresql" else {}
    with raw_engine.connect().execution_options(**options) as conn, conn.begin():
        _require_raw_table(conn)
        yield conn


def _raw_summary(conn: Connection) -> tuple[int, list[int]]:
    """RAW's row count and batch numbers, without reading its rows (``EmptyStoreError`` when there are none)."""
    rows = int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {RAW_TABLE}").scalar_one())
    if rows == 0:
        raise EmptyStoreError(_NO_RAW_ROWS)
    return rows, sorted(int(b) for (b,) in conn.exec_driver_sql(f"SELECT DISTINCT batch_number FROM {RAW_TABLE}"))


@dataclass
class _Tally:
    raw_rows: int = 0
    split_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    patients: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def _write_partitions(raw: Connection, clean: Connection, parts: int, spec: SplitSpec) -> _Tally:
    """Clean each patient partition of RAW and append it to the CLEAN table; what was read and written."""
    tally = _Tally()
    for k in range(parts):
        part = _raw_rows(raw, (k, parts))
        frame = clean_frame(part, spec)
        if set(frame.columns) != set(_CLEAN_COLUMNS):  # a column added to clean_frame must be added there too
            raise RuntimeError(
                f"clean_frame's columns differ from the table's: {set(frame.columns) ^ set(_CLEAN_COLUMNS)}"
            )
        write_frame(clean, CLEAN_TABLE, frame[_CLEAN_COLUMNS])
        tally.raw_rows += len(part)
        for s in SPLITS:  # a patient is in one partition: patient counts add up
            tally.split_rows[s] += int((frame["split"] == s).sum())
            tally.patients[s] += int(frame.loc[frame["split"] == s, "patient_nbr"].nunique())
    return tally


def build_clean(
    raw_engine: Engine, clean_engine: Engine, spec: SplitSpec, partition_rows: int = CLEAN_PARTITION_ROWS
) -> CleanReport:
    """Rebuild the CLEAN table from everything in RAW, atomically (readers see old or new, never half), in
    ``ceil(raw rows / partition_rows)`` patient partitions (module docstring); the table does not depend on it.

    Raises ``EmptyStoreError`` when RAW is empty, ``ValueError`` for ``partition_rows`` below 1, and
    ``RuntimeError`` (nothing replaced) if the partitions did not read every RAW row once."""
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be at least 1, got {partition_rows}")
    started = time.perf_counter()
    with _raw_snapshot(raw_engine) as raw, clean_engine.begin() as conn:
        raw_rows, batches = _raw_summary(raw)
        parts = max(1, -(-raw_rows // partition_rows))
        table = _clean_table(_CLEAN_COLUMNS, _INTEGER_COLUMNS)
        table.drop(conn, checkfirst=True)
        table.create(conn)
        tally = _write_partitions(raw, conn, parts, spec)
        if tally.raw_rows != raw_rows:
            raise RuntimeError(f"the {parts} partitions of RAW read {tally.raw_rows:,} rows of {raw_rows:,}")
        clean_rows = sum(tally.split_rows.values())
        clean_builds.create(conn, checkfirst=True)
        conn.execute(
            clean_builds.insert().values(
                built_at=datetime.now(UTC),
                raw_rows=raw_rows,
                excluded_rows=raw_rows - clean_rows,
                clean_rows=clean_rows,
                raw_batches=",".join(map(str, batches)),
                split_seed=spec.seed,
                split_fractions=f"validation={spec.validation},test={spec.test}",
                **{f"{s}_rows": tally.split_rows[s] for s in SPLITS},
            )
        )
    elapsed = time.perf_counter() - started
    return CleanReport(raw_rows, raw_rows - clean_rows, clean_rows, tally.split_rows, tally.patients, batches, elapsed)


def read_clean(engine: Engine, split: str | None = None) -> pd.DataFrame:
    """The CLEAN rows (one split or all), with integer columns as int64 and text as strings."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    with engine.connect() as conn:
        if not inspect(conn).has_table(CLEAN_TABLE):
            raise EmptyStoreError("the CLEAN database is empty: run `readmission build-clean` first.")
        names = [c["name"] for c in inspect(conn).get_columns(CLEAN_TABLE)]
        where = f" WHERE split = '{split}'" if split else ""
        sql = f"SELECT {', '.join(quote(conn, n) for n in names)} FROM {CLEAN_TABLE}{where} ORDER BY encounter_id"
        return read_query(conn, sql, {n: ("Int64" if n in _INTEGER_COLUMNS else "string") for n in names})


def sample_encounters(engine: Engine, rows: int, seed: int = 0, split: str = "test") -> list[dict[str, object]]:
    """``rows`` encounters of one CLEAN split as API request bodies (model inputs only, None for missing),
    drawn at random: realistic payloads for the load test, following the data's own distribution."""
    frame = read_clean(engine, split)
    if frame.empty:
        raise EmptyStoreError(f"the CLEAN {split} split holds no rows: run `readmission build-clean` first.")
    return encounter_requests(frame.sample(n=rows, replace=len(frame) < rows, random_state=seed))


def encounter_requests(frame: pd.DataFrame, with_ids: bool = False) -> list[dict[str, object]]:
    """The CLEAN rows of ``frame`` as API request bodies: the model inputs (None for missing) and, with
    ``with_ids``, the row's ``encounter_id`` (which the API logs, never feeds the model)."""
    names = list(schema.MODEL_INPUT_NAMES) + ([schema.ENCOUNTER_ID] if with_ids else [])
    return [
        {name: (None if pd.isna(value) else int(value) if isinstance(value, (int, np.integer)) else str(value))
         for name, value in record.items()}
        for record in frame[names].to_dict(orient="records")
    ]  # fmt: skip
