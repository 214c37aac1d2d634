"""The outcome feed (``readmission outcomes FILE``; POST /outcomes uses the same code): malformed feeds record
nothing, each outcome is recorded once, and nothing stored is ever changed; on SQLite, PostgreSQL and MariaDB
(the deployed log)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine

from readmission.db import create_db_engine
from readmission.errors import SourceFormatError
from readmission.outcomes import OutcomeFeedError, check_outcomes, read_outcome_file, record_outcomes
from readmission.prediction_table import prediction_log, prediction_outcomes

NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
LOGGED = (101, 102, 103, 104)  # encounters with a logged prediction


def _log_predictions(engine: Engine, ids: tuple[int, ...]) -> None:
    prediction_log.create(engine, checkfirst=True)
    prediction_outcomes.create(engine, checkfirst=True)
    row = {
        "request_id": "r", "item": 0, "created_at": NOW - dt.timedelta(days=40), "endpoint": "predict",
        "model_name": "diabetes-readmission", "model_version": "1", "inputs": {}, "predicted_class": "NO",
        "probability_no": 0.8, "probability_after_30": 0.1, "probability_within_30": 0.1, "risk_band": "low",
        "latency_ms": 1.0,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(prediction_log.insert(), [{**row, "log_id": uuid.uuid4().hex, "encounter_id": i} for i in ids])


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def log_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'log.db'}")
    elif request.param == "postgres":
        engine = create_db_engine(request.getfixturevalue("postgres").create())
    else:
        admin_url = request.getfixturevalue("mysql_admin_url")
        name = f"outcomes_{uuid.uuid4().hex[:8]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine = create_db_engine(f"{admin_url}/{name}")
    _log_predictions(engine, LOGGED)
    yield engine
    engine.dispose()
    if request.param == "mysql":
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


def _stored(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        query = select(prediction_outcomes.c.encounter_id, prediction_outcomes.c.readmitted)
        return {int(e): str(r) for e, r in conn.execute(query)}


def _feed(*rows: tuple[Any, Any, Any]) -> list[dict[str, Any]]:
    return [{"encounter_id": e, "readmitted": r, "observed_at": o} for e, r, o in rows]


def test_a_feed_is_recorded_once_and_a_resend_changes_nothing(log_engine: Engine) -> None:
    feed = check_outcomes(_feed((101, "<30", "2026-11-01"), (102, "NO", "2026-11-02T10:00:00+02:00")), "feed")
    first = record_outcomes(log_engine, feed, "api", now=NOW)
    again = record_outcomes(log_engine, feed, "api", now=NOW)
    assert (first.recorded, first.already_recorded) == (2, 0)
    assert (again.recorded, again.already_recorded) == (0, 2)
    assert _stored(log_engine) == {101: "<30", 102: "NO"}
    with log_engine.connect() as conn:
        observed = conn.execute(
            select(prediction_outcomes.c.observed_at).where(prediction_outcomes.c.encounter_id == 102)
        ).scalar_one()
    assert observed.replace(tzinfo=None) == dt.datetime(2026, 11, 2, 8)  # stored in UTC


def test_a_conflicting_label_and_an_unknown_encounter_are_counted_and_never_stored(log_engine: Engine) -> None:
    record_outcomes(log_engine, check_outcomes(_feed((101, "<30", "2026-11-01")), "feed"), "file", now=NOW)
    report = record_outcomes(
        log_engine, check_outcomes(_feed((101, "NO", "2026-11-03"), (999, "NO", "2026-11-03"), (103, ">30", "2026-11-03")), "feed"), "file", now=NOW
    )  # fmt: skip
    assert (report.recorded, report.conflicting, report.unknown_encounter) == (1, 1, 1)
    assert (report.conflicting_ids, report.unknown_ids) == ([101], [999])
    assert _stored(log_engine) == {101: "<30", 103: ">30"}
    assert "1 conflicting" in report.summary() and "1 unknown encounter" in report.summary()


BAD_ROWS = [
    ((101, "YES", "2026-11-01"), "readmitted", "'YES' is not one of NO, >30, <30"),
    (("abc", "NO", "2026-11-01"), "encounter_id", "is not a whole number"),
    ((0, "NO", "2026-11-01"), "encounter_id", "out of range"),
    ((101, "NO", "yesterday"), "observed_at", "is not an ISO 8601 time"),
    ((101, "NO", "2027-01-01"), "observed_at", "is in the future"),
    ((101, "", "2026-11-01"), "readmitted", "missing"),
    ((True, "NO", "2026-11-01"), "encounter_id", "is not a whole number"),
]


@pytest.mark.parametrize(("row", "name", "said"), BAD_ROWS)
def test_one_bad_outcome_refuses_the_feed_naming_row_and_field(row: tuple[Any, Any, Any], name: str, said: str) -> None:
    with pytest.raises(OutcomeFeedError) as caught:
        check_outcomes(_feed((102, "NO", "2026-11-01"), row), "the feed", now=NOW)
    assert caught.value.problems == [{"row": 2, "field": name, "message": caught.value.problems[0]["message"]}]
    assert (
        said in str(caught.value) and "row 2 " + name in str(caught.value) and "nothing recorded" in str(caught.value)
    )


def test_one_encounter_with_two_labels_in_one_feed_is_refused() -> None:
    with pytest.raises(OutcomeFeedError, match=r"row 3 encounter_id: 101 is also on row 1 with '<30', here 'NO'"):
        check_outcomes(_feed((101, "<30", "2026-11-01"), (102, "NO", "2026-11-01"), (101, "NO", "2026-11-02")), "f")
    exact_repeat = _feed((101, "<30", "2026-11-01"), (101, "<30", "2026-11-01"))
    assert len(check_outcomes(exact_repeat, "f")) == 1


def test_a_bad_file_records_nothing_and_names_its_lines(log_engine: Engine, tmp_path: Path) -> None:
    record_outcomes(log_engine, check_outcomes(_feed((101, "<30", "2026-11-01")), "feed"), "file", now=NOW)
    bad = tmp_path / "outcomes.csv"
    bad.write_text("encounter_id;readmitted;observed_at\n102;NO;2026-11-01\n\n103;maybe;2026-11-01\n")
    with pytest.raises(OutcomeFeedError, match=r"line 4 readmitted: 'maybe' is not one of"):
        read_outcome_file(bad)
    assert _stored(log_engine) == {101: "<30"}  # nothing of the bad file, nothing stored changed
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("encounter_id,outcome\n102,NO\n")
    with pytest.raises(SourceFormatError, match="has no column readmitted, observed_at"):
        read_outcome_file(no_column)


def test_a_log_from_before_encounter_ids_gets_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    """The deployed log predates ``encounter_id``: the feed adds the column (nullable) and loses no row."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE prediction_log (id INTEGER PRIMARY KEY, log_id VARCHAR(32), created_at DATETIME)")
        )
        conn.execute(text("INSERT INTO prediction_log (log_id, created_at) VALUES ('a', '2026-10-01 00:00:00')"))
    report = record_outcomes(engine, check_outcomes(_feed((5, "NO", "2026-11-01")), "f"), "file", now=NOW)
    assert report.unknown_encounter == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT log_id, encounter_id FROM prediction_log")).all() == [("a", None)]
    engine.dispose()


LABELS = st.sampled_from(["NO", ">30", "<30"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(feeds=st.lists(st.lists(st.tuples(st.sampled_from((*LOGGED, 7, 8)), LABELS), max_size=6), max_size=4))
def test_any_sequence_of_feeds_keeps_each_first_label(
    tmp_path_factory: pytest.TempPathFactory, feeds: list[Any]
) -> None:
    """Generated: whatever feeds arrive (valid or refused), each logged encounter keeps the first label a
    recorded feed gave it, and no unknown encounter is ever stored."""
    engine = create_db_engine(f"sqlite:///{tmp_path_factory.mktemp('feeds') / 'log.db'}")
    _log_predictions(engine, LOGGED)
    expected: dict[int, str] = {}
    for feed in feeds:
        rows = _feed(*((e, r, "2026-11-01") for e, r in feed))
        try:
            checked = check_outcomes(rows, "feed")
        except OutcomeFeedError:
            assert len({(e, r) for e, r in feed}) > len({e for e, _ in feed})  # refused: one id, two labels
            continue
        record_outcomes(engine, checked, "api", now=NOW)
        for outcome in checked:
            if outcome.encounter_id in LOGGED:
                expected.setdefault(outcome.encounter_id, outcome.readmitted)
    assert _stored(engine) == expected
    engine.dispose()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("²", "is not a whole number"),
        ("١٢", "is not a whole number"),
        ("9" * 5000, "out of range"),
        (10**18, "out of range"),
    ],
)
def test_odd_encounter_ids_are_refused_not_crashed_on(value: Any, said: str) -> None:
    """Before: "²" and 5,000 digits raised ValueError inside the check (500 from POST /outcomes), and "١٢" was
    read as encounter 12."""
    with pytest.raises(OutcomeFeedError, match=said):
        check_outcomes(_feed((value, "NO", "2026-11-01")), "feed", now=NOW)


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:00-01:00"])
def test_a_time_whose_offset_leaves_the_calendar_is_refused(when: str) -> None:
    """Before: OverflowError from astimezone (500 from POST /outcomes)."""
    with pytest.raises(OutcomeFeedError, match="observed_at"):
        check_outcomes(_feed((101, "NO", when)), "feed", now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {
            "encounter_id": st.one_of(st.text(max_size=30), st.integers(), st.none()),
            "readmitted": st.text(max_size=5),
            "observed_at": st.one_of(st.text(max_size=40), st.datetimes(timezones=st.timezones())),
        }
    )
)
def test_any_outcome_is_accepted_or_refused_with_a_reason(values: dict[str, Any]) -> None:
    """Generated: whatever a feed holds, checking it returns outcomes or raises OutcomeFeedError, never anything else."""
    problems: list[dict[str, Any]] = []
    try:
        checked = check_outcomes([values], "feed", now=NOW)
    except OutcomeFeedError as exc:
        checked, problems = [], exc.problems
    assert bool(problems) != bool(checked)
    assert all(1 <= o.encounter_id < 10**18 and o.readmitted in ("NO", ">30", "<30") for o in checked)


def test_a_header_alone_holds_no_outcome_and_unreadable_records_are_named_with_the_bad_fields(tmp_path: Path) -> None:
    """Before: a header alone, or a file whose every record had the wrong field count, raised pandas'
    EmptyDataError (a traceback); one unreadable record hid the bad fields of the others until the next try;
    a pipe-separated file was told to use the header of diabetic_data.csv."""
    header_only = tmp_path / "header.csv"
    header_only.write_text("encounter_id,readmitted,observed_at\n")
    assert read_outcome_file(header_only) == []
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("encounter_id,readmitted,observed_at\n1,NO,2026-11-01,extra\n2,maybe,2026-11-01\n")
    with pytest.raises(OutcomeFeedError) as caught:
        read_outcome_file(mixed)
    assert [(p["row"], p["field"]) for p in caught.value.problems] == [("line 2", "record"), ("line 3", "readmitted")]
    piped = tmp_path / "piped.csv"
    piped.write_text("encounter_id|readmitted|observed_at\n1|NO|2026-11-01\n")
    with pytest.raises(SourceFormatError, match="with the header encounter_id,readmitted,observed_at") as said:
        read_outcome_file(piped)
    assert "diabetic_data.csv" not in str(said.value)
