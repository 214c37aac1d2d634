"""The outcome feed: observed readmissions, keyed by encounter, recorded beside the prediction log.

An outcome is ``(encounter_id, readmitted, observed_at)``: the caller's encounter id (the one it sent with the
prediction), the contract's target label (``NO``, ``>30`` or ``<30``) and when it was known (ISO 8601; UTC when
no offset is given). It arrives weeks after the prediction, from a file (``readmission outcomes FILE``) or from
POST /outcomes; both go through ``check_outcomes`` and ``record_outcomes`` here, so they accept and refuse the
same things.

- A malformed outcome (missing or non-integer id, a label outside the contract, an unreadable or future time,
  one encounter given twice with different labels) refuses the whole feed: nothing is written, and the error
  lists each bad row with its field and the fix.
- Otherwise each outcome is recorded once (idempotent): one already stored with the same label is counted
  ``already_recorded``; one stored with a different label is counted ``conflicting`` and the stored one kept
  (a correction is an operator's decision, never a feed's); one whose encounter has no logged prediction is
  counted ``unknown_encounter`` and not stored (it could never be joined). Nothing stored is ever changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from readmission import schema
from readmission.db import write_transaction
from readmission.errors import ReadmissionError, short_reason
from readmission.prediction_table import (
    ADD_ENCOUNTER_COLUMN,
    ADD_ENCOUNTER_INDEX,
    create_tables,
    ensure_log_columns,
    prediction_log,
    prediction_outcomes,
)

OUTCOME_COLUMNS = ("encounter_id", "readmitted", "observed_at")
MAX_LISTED = 20  # problems and encounter ids listed in a message or an answer (all are counted)
_CHUNK = 500  # ids per IN (...) query (SQLite before 3.32 takes at most 999 parameters)


class OutcomeFeedError(ReadmissionError):
    """A feed with malformed outcomes: nothing was recorded. ``problems`` lists ``{row, field, message}``."""

    def __init__(self, source: str, problems: list[dict[str, Any]], total: int) -> None:
        self.problems, self.total = problems, total
        listed = "; ".join(f"{_where(p['row'])} {p['field']}: {p['message']}" for p in problems[:MAX_LISTED])
        more = f" (and {total - MAX_LISTED} more)" if total > MAX_LISTED else ""
        super().__init__(f"{source}: {total} bad outcome(s), nothing recorded: {listed}{more}")


def _where(row: int | str) -> str:
    return row if isinstance(row, str) else f"row {row}"


@dataclass(frozen=True)
class Outcome:
    """One observed outcome: ``observed_at`` is timezone-aware UTC."""

    encounter_id: int
    readmitted: str
    observed_at: dt.datetime


@dataclass
class FeedReport:
    """What recording a feed did: counts, and the encounter ids of each kind skipped (all of them: a feed is
    bounded, and a sender resends the unknown ones once their predictions are logged)."""

    received: int = 0
    recorded: int = 0
    already_recorded: int = 0
    conflicting: int = 0
    unknown_encounter: int = 0
    conflicting_ids: list[int] = field(default_factory=list)
    unknown_ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was recorded and what was skipped, with why."""
        parts = [f"{self.recorded:,} recorded", f"{self.already_recorded:,} already recorded (same label)"]
        if self.conflicting:
            parts.append(
                f"{self.conflicting:,} conflicting (a different label is stored; kept) e.g. {self.conflicting_ids[:5]}"
            )
        if self.unknown_encounter:
            parts.append(
                f"{self.unknown_encounter:,} unknown encounter(s) (no logged prediction with that encounter_id; not "
                f"stored) e.g. {self.unknown_ids[:5]}"
            )
        return f"{self.received:,} outcome(s): " + ", ".join(parts)


def _problem(row: int | str, name: str, message: str) -> dict[str, Any]:
    return {"row": row, "field": name, "message": message}


def _encounter_id(value: Any) -> int | str:
    """The id, or why it is not one: a whole number 1 .. 10**18 - 1, as a JSON number or as ASCII digits (what
    a CSV file gives); no other digits (``int`` would read Arabic-Indic ones), at most 18 of them."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:  # 12.0, as /predict accepts
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        text = value.strip().lstrip("0") or "0"
        if len(text) > len(str(schema.MAX_ENCOUNTER_ID)):
            return f"{text[:20]}... is out of range: encounter ids are 1 to {schema.MAX_ENCOUNTER_ID}"
        number = int(text)
    else:
        return f"{str(value)[:40]!r} is not a whole number: give the encounter_id you sent with the prediction"
    if not 1 <= number <= schema.MAX_ENCOUNTER_ID:
        return f"{number} is out of range: encounter ids are 1 to {schema.MAX_ENCOUNTER_ID}"
    return number


def _observed_at(value: Any, now: dt.datetime) -> dt.datetime | str:
    """The time (UTC), or why it is not one: ISO 8601, not in the future (UTC assumed without an offset)."""
    try:
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).strip())
        when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves year 1 or 9999 out of range
        return f"{str(value)[:40]!r} is not an ISO 8601 time: write e.g. 2026-11-30 or 2026-11-30T14:00:00Z"
    if when > now + dt.timedelta(minutes=5):
        return f"{when.isoformat()} is in the future: give when the outcome was observed"
    return when


def _check_one(
    row: int | str, values: Mapping[str, Any], now: dt.datetime
) -> tuple[Outcome | None, list[dict[str, Any]]]:
    """One raw outcome checked: the outcome, or the problems of its fields."""
    problems = [
        _problem(row, n, "missing: every outcome needs it") for n in OUTCOME_COLUMNS if values.get(n) in (None, "")
    ]
    if problems:
        return None, problems
    encounter_id = _encounter_id(values["encounter_id"])
    label = str(values["readmitted"]).strip()
    observed_at = _observed_at(values["observed_at"], now)
    if isinstance(encounter_id, str):
        problems.append(_problem(row, "encounter_id", encounter_id))
    if label not in schema.TARGET_LABELS:
        problems.append(_problem(row, "readmitted", f"{label!r} is not one of {', '.join(schema.TARGET_LABELS)}"))
    if isinstance(observed_at, str):
        problems.append(_problem(row, "observed_at", observed_at))
    if problems:
        return None, problems
    assert isinstance(encounter_id, int) and isinstance(observed_at, dt.datetime)
    return Outcome(encounter_id, label, observed_at), []


def check_outcomes(
    rows: Iterable[Mapping[str, Any]],
    source: str,
    row_names: Sequence[int | str] | None = None,
    now: dt.datetime | None = None,
) -> list[Outcome]:
    """The outcomes of ``rows`` (mappings with ``encounter_id``, ``readmitted``, ``observed_at``), one per
    encounter (an exact repeat within the feed is kept once).

    Raises ``OutcomeFeedError`` (rows named as ``row_names`` says) when any row is malformed or one encounter is
    given two different labels: then nothing may be recorded. Rows are named by ``row_names`` (a file's
    ``"line 7"``) or numbered from 1.
    """
    now = now or dt.datetime.now(dt.UTC)
    problems: list[dict[str, Any]] = []
    seen: dict[int, tuple[int | str, Outcome]] = {}
    for position, values in enumerate(rows):
        row = row_names[position] if row_names is not None else position + 1
        outcome, found = _check_one(row, values, now)
        problems.extend(found)
        if outcome is None:
            continue
        earlier = seen.get(outcome.encounter_id)
        if earlier is None:
            seen[outcome.encounter_id] = (row, outcome)
        elif earlier[1].readmitted != outcome.readmitted:
            problems.append(
                _problem(
                    row,
                    "encounter_id",
                    f"{outcome.encounter_id} is also on {_where(earlier[0])} with "
                    f"{earlier[1].readmitted!r}, here {outcome.readmitted!r}: keep the one that is true",
                )
            )
    if problems:
        raise OutcomeFeedError(source, problems, len(problems))
    return [outcome for _, outcome in seen.values()]


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _stored_labels(conn: Any, ids: Sequence[int]) -> dict[int, str]:
    table = prediction_outcomes
    out: dict[int, str] = {}
    for chunk in _chunks(ids):
        query = select(table.c.encounter_id, table.c.readmitted).where(table.c.encounter_id.in_(chunk))
        out.update((int(e), str(r)) for e, r in conn.execute(query))
    return out


def _logged_ids(conn: Any, ids: Sequence[int]) -> set[int]:
    column = prediction_log.c.encounter_id
    found: set[int] = set()
    for chunk in _chunks(ids):
        found.update(conn.execute(select(column).where(column.in_(chunk)).distinct()).scalars())
    return found


def _insert_new(dialect: str) -> Any:
    """INSERT into the outcome table that skips an encounter already stored (a concurrent feed's)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(prediction_outcomes).on_conflict_do_nothing(index_elements=["encounter_id"])
    prefix = "OR IGNORE" if dialect == "sqlite" else "IGNORE"  # SQLite; MySQL / MariaDB
    return prediction_outcomes.insert().prefix_with(prefix)


class LogNotReadyError(ReadmissionError):
    """The prediction log has no ``encounter_id`` column and this user may not add it: outcomes cannot be joined."""


def prepare_log(engine: Engine) -> None:
    """Make the tables the feed needs (the log, the outcomes) and the log's ``encounter_id`` column on a log from
    before it. Raises ``LogNotReadyError`` (with the statements an administrator runs) when the column is
    missing and this user may not add it."""
    create_tables(engine, prediction_log, prediction_outcomes)
    try:
        ensure_log_columns(engine)
    except DBAPIError as exc:
        raise LogNotReadyError(
            f"the prediction log has no encounter_id column and this database user may not add it "
            f"({short_reason(exc)}): run as an administrator {ADD_ENCOUNTER_COLUMN}; {ADD_ENCOUNTER_INDEX} "
            "(README, Operations); the API uses the column within 10 minutes"
        ) from None


def _classify(
    outcomes: Sequence[Outcome], stored: dict[int, str], logged: set[int], report: FeedReport
) -> list[Outcome]:
    """Count each outcome already stored (same label or conflicting) or unknown; the ones to insert."""
    new = []
    for o in outcomes:
        if o.encounter_id in stored:
            same = stored[o.encounter_id] == o.readmitted
            report.already_recorded += same
            if not same:
                report.conflicting += 1
                report.conflicting_ids.append(o.encounter_id)
        elif o.encounter_id not in logged:
            report.unknown_encounter += 1
            report.unknown_ids.append(o.encounter_id)
        else:
            new.append(o)
    return new


def record_outcomes(
    engine: Engine, outcomes: Sequence[Outcome], source: str, now: dt.datetime | None = None, prepared: bool = False
) -> FeedReport:
    """Record checked ``outcomes`` (``check_outcomes``); ``source`` is ``file`` or ``api``.

    Prepares the log first (``prepare_log``) unless ``prepared``. Never changes a stored outcome: the stored
    labels are read, the new outcomes inserted in a write transaction of their own with insert-or-skip, and
    the labels read again, so an outcome a concurrent feed stored in between is counted as already recorded
    or conflicting, not as recorded. Raises SQLAlchemy's errors (nothing of this feed stored; a resend is
    safe) and ``LogNotReadyError``.
    """
    now = now or dt.datetime.now(dt.UTC)
    report = FeedReport(received=len(outcomes))
    if not prepared:
        prepare_log(engine)
    ids = [o.encounter_id for o in outcomes]
    with engine.connect() as conn:
        stored, logged = _stored_labels(conn, ids), _logged_ids(conn, ids)
    new = _classify(outcomes, stored, logged, report)
    if new:
        rows = [
            {"encounter_id": o.encounter_id, "readmitted": o.readmitted, "observed_at": o.observed_at,
             "recorded_at": now, "source": source}
            for o in new
        ]  # fmt: skip
        with write_transaction(engine) as conn:
            conn.execute(_insert_new(conn.dialect.name), rows)
        with engine.connect() as conn:
            after = _stored_labels(conn, [o.encounter_id for o in new])
        raced = [o for o in new if after.get(o.encounter_id) != o.readmitted]  # a concurrent feed's label won
        report.conflicting += len(raced)
        report.conflicting_ids.extend(o.encounter_id for o in raced)
        report.recorded = len(new) - len(raced)
    return report


OUTCOME_FIX = (
    f"Save it as CSV (comma-, semicolon- or tab-separated, UTF-8) with the header {','.join(OUTCOME_COLUMNS)}."
)


def read_outcome_file(path: Path) -> list[Outcome]:
    """The checked outcomes of the CSV file ``path`` (columns ``encounter_id``, ``readmitted``, ``observed_at``;
    others ignored; any dialect ``readmission.csvfile`` reads; a header alone holds no outcome). Raises
    ``SourceFormatError`` when the file cannot be read or lacks a column, ``OutcomeFeedError`` naming every bad
    record and field by its line when any is malformed: nothing may then be recorded."""
    from readmission.csvfile import SOURCE_FIX, parse_records, read_records
    from readmission.errors import SourceFormatError

    try:
        records = read_records(path.read_bytes(), str(path))
    except OSError as exc:
        raise SourceFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except SourceFormatError as exc:  # the loader's advice names diabetic_data.csv: give this file's
        raise SourceFormatError(str(exc).replace(SOURCE_FIX, OUTCOME_FIX)) from None
    missing = [name for name in OUTCOME_COLUMNS if name not in records.header]
    if missing:
        raise SourceFormatError(
            f"{path} has no column {', '.join(missing)} (found: {','.join(records.header)}). {OUTCOME_FIX}"
        )
    frame, bad = parse_records(records.header, records.lines)
    unreadable = [_problem(f"line {records.line_numbers[i]}", "record", why) for i, why in sorted(bad.items())]
    rows = frame[list(OUTCOME_COLUMNS)].to_dict(orient="records")
    try:
        checked = check_outcomes(rows, str(path), [f"line {records.line_numbers[i]}" for i in frame.index])
    except OutcomeFeedError as exc:  # every problem at once: the unreadable records and the bad fields
        problems = sorted([*unreadable, *exc.problems], key=lambda p: int(str(p["row"]).split()[-1]))
        raise OutcomeFeedError(str(path), problems, len(problems)) from None
    if unreadable:
        raise OutcomeFeedError(str(path), unreadable, len(unreadable))
    return checked
