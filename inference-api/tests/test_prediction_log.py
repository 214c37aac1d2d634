"""The prediction log's writer against the real MariaDB: what is written reads back exactly, a retried
batch never doubles rows, a killed writer process loses nothing, and the counters add up."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from apisupport import wait_until
from logsupport import log_row
from sqlalchemy import select

from inference_api.metrics import Metrics
from inference_api.prediction_log import (
    PredictionLog,
    _json_text,
    _Writer,
    count_rows,
    create_log_engine,
    prediction_log,
)
from readmission import schema
from readmission.prediction_table import prediction_explanations


def _row(inputs: dict[str, Any], item: int = 0) -> dict[str, Any]:
    return log_row(dt.datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=dt.UTC), item, inputs)


def test_rows_read_back_exactly_including_quotes_and_backslashes(mysql_log_url: str) -> None:
    tricky = {
        **next(iter(schema.EXAMPLE_ENCOUNTERS.values())),
        "note": 'O\'Brien said "hi" \\ C:\\temp\n\t\u00e9 \u4e2d \U0001f600',
    }
    rows = [_row(tricky, i) for i in range(3)]
    log = PredictionLog(mysql_log_url, Metrics(), batch_size=2)
    log.start()
    log.submit(rows)
    wait_until(lambda: log.status().written == 3, 30, "three rows written")
    log.close(5)
    engine = create_log_engine(mysql_log_url)
    with engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(select(prediction_log).order_by(prediction_log.c.item))]
    assert [r["inputs"] for r in stored] == [tricky] * 3
    with engine.connect() as conn:  # the text as stored: ASCII (escapes), whatever the table's character set
        texts = [t for (t,) in conn.exec_driver_sql("SELECT inputs FROM prediction_log")]
    assert all(t.isascii() and "\\u4e2d" in t for t in texts), texts[0][-80:]
    engine.dispose()
    assert [r["log_id"] for r in stored] == [r["log_id"] for r in rows]
    assert stored[0]["probability_within_30"] == 0.25 and stored[0]["model_version"] == "7"
    assert stored[0]["created_at"].replace(tzinfo=dt.UTC) == rows[0]["created_at"]


def test_a_batch_written_twice_is_stored_once(mysql_log_url: str) -> None:
    """The writer retries a batch whose COMMIT may have reached the database: rows carry their own id."""
    rows = [_row({"a": 1}, i) for i in range(4)]
    writer = _Writer(mysql_log_url)
    writer.write(rows)
    writer.write([*rows, _row({"a": 2}, 9)])
    writer.dispose()
    engine = create_log_engine(mysql_log_url)
    with engine.connect() as conn:
        items = sorted(r.item for r in conn.execute(select(prediction_log.c.item)))
    engine.dispose()
    assert items == [0, 1, 2, 3, 9]


def test_a_killed_writer_process_is_restarted_and_nothing_is_lost_or_doubled(mysql_log_url: str) -> None:
    rows = [_row({"a": i}, i) for i in range(300)]
    metrics = Metrics()
    log = PredictionLog(mysql_log_url, metrics, batch_size=50)
    log.start()
    log.submit(rows[:100])
    wait_until(lambda: log.status().written == 100, 30, "the first rows written")
    first_pid = log.writer_pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    log.submit(rows[100:])  # shipped to a dead process at first, then resent to its successor
    wait_until(lambda: log.status().written >= 200 and log.status().queued == 0, 60, "the rest written")
    status = log.close(10)
    assert log.writer_pid != first_pid
    assert status.queued == 0 and status.dropped == 0 and status.write_errors >= 1
    assert count_rows(mysql_log_url) == 300
    assert metrics.registry.get_sample_value("inference_prediction_log_write_errors_total") == status.write_errors


def test_rows_beyond_the_queue_size_are_dropped_and_counted_while_the_database_is_down(
    unreachable_mysql_url: str,
) -> None:
    metrics = Metrics()
    log = PredictionLog(unreachable_mysql_url, metrics, queue_size=10, retry_max_seconds=0.5)
    log.start()
    log.submit([_row({"a": i}, i) for i in range(4)])
    log.submit([_row({"a": i}, i) for i in range(4, 25)])
    wait_until(lambda: log.status().write_errors >= 1, 30, "a failed write")
    status = log.status()
    assert (status.queued, status.dropped) == (10, 15)
    assert metrics.registry.get_sample_value("inference_prediction_log_rows_dropped_total") == 15
    assert status.last_error is not None and "OperationalError" in status.last_error
    closed = log.close(0.5)
    assert closed.queued == 10 and closed.written == 0


def test_a_long_outage_stays_under_the_byte_bound_and_counts_every_drop(unreachable_mysql_url: str) -> None:
    """Rows are pushed far past the byte bound while the database is down: the serialised bytes held
    (buffered and sent but unwritten) never pass it, and every row beyond it is counted as dropped."""
    rows = [_row({"a": f"{i:06d}", "text": "x" * 400}, 100 + i) for i in range(600)]
    size = len(orjson.dumps(rows[0]))
    assert {len(orjson.dumps(r)) for r in rows} == {size}  # every row has the same serialised size
    bound = 100 * size + size // 2  # room for exactly 100 rows
    metrics = Metrics()
    log = PredictionLog(unreachable_mysql_url, metrics, buffer_bytes=bound, retry_max_seconds=0.2)
    log.start()
    try:
        for start in range(0, len(rows), 30):
            log.submit(rows[start : start + 30])
            assert log.status().buffered_bytes <= bound
            if start == 0:
                wait_until(lambda: log.status().write_errors >= 1, 60, "the writer to meet the outage")
        status = log.status()
        assert (status.queued, status.buffered_bytes, status.dropped) == (100, 100 * size, 500)
        assert metrics.registry.get_sample_value("inference_prediction_log_rows_dropped_total") == 500
        assert metrics.registry.get_sample_value("inference_prediction_log_buffer_bytes") == 100 * size
    finally:
        log.close(0.5)


def test_a_row_that_cannot_be_serialised_is_dropped_and_counted_the_others_written(
    mysql_log_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [_row({"a": 1}, 0), _row({"a": {1, 2}}, 1), _row({"a": 3}, 2)]  # a set is not JSON
    metrics = Metrics()
    log = PredictionLog(mysql_log_url, metrics)
    log.start()
    with caplog.at_level(logging.ERROR, logger="inference_api.prediction_log"):
        log.submit(rows)
    wait_until(lambda: log.status().written == 2, 30, "the two serialisable rows written")
    status = log.close(5)
    assert (status.written, status.dropped, status.queued) == (2, 1, 0)
    assert metrics.registry.get_sample_value("inference_prediction_log_rows_dropped_total") == 1
    assert count_rows(mysql_log_url) == 2
    assert any("cannot be serialised" in r.getMessage() and "TypeError" in r.getMessage() for r in caplog.records)


def test_repeated_write_failures_are_logged_once_per_interval_and_the_recovery_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The writer process logs the first failure, stays quiet for the interval, and says when it recovered."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the log database's folder cannot be made while this file is here")
    log = PredictionLog(
        f"sqlite:///{blocker / 'log.db'}", Metrics(), retry_max_seconds=0.01, warn_interval_seconds=3600
    )
    log.start()
    try:
        log.submit([_row({"a": i}, i) for i in range(5)])
        wait_until(lambda: log.status().write_errors >= 20, 60, "twenty failed writes")
        blocker.unlink()
        wait_until(lambda: log.status().written == 5, 60, "the rows written after the recovery")
        failures = log.status().write_errors
    finally:
        log.close(5)
    lines = capfd.readouterr().err.splitlines()
    failed = [line for line in lines if "prediction log write of" in line and "failed" in line]
    recovered = [line for line in lines if "prediction log writes recovered" in line]
    assert len(failed) == 1, failed[:5]
    assert len(recovered) == 1 and f"after {failures} failed attempt(s)" in recovered[0], recovered


def _explained_rows(count: int) -> list[dict[str, Any]]:
    rows = [log_row(dt.datetime.now(dt.UTC), i) for i in range(count)]
    for row in rows:
        row["explanation"] = {"base_value": -2.0, "value": -1.0, "contributions": [{"feature": "race"}]}
    return rows


def test_a_write_leaves_its_rows_whole_so_a_retry_keeps_the_explanations(tmp_path: Path) -> None:
    """The writer retries a failed batch with the same row objects: they must still hold their explanations
    (a first version popped them, and a retried batch would have lost them)."""
    rows = _explained_rows(3)
    before = orjson.dumps(rows, option=orjson.OPT_SORT_KEYS)
    writer = _Writer(f"sqlite:///{tmp_path / 'log.db'}")
    writer.write(rows)
    assert orjson.dumps(rows, option=orjson.OPT_SORT_KEYS) == before
    writer.write(rows)  # the retry of a batch whose first insert did commit: nothing doubled
    with create_log_engine(f"sqlite:///{tmp_path / 'log.db'}").connect() as conn:
        assert len(conn.execute(select(prediction_explanations.c.log_id)).all()) == 3
        assert len(conn.execute(select(prediction_log.c.log_id)).all()) == 3
    writer.dispose()


def test_an_explanation_that_cannot_be_stored_never_holds_the_predictions_back(tmp_path: Path) -> None:
    """A log whose explanations table is unusable (here: made by someone else, without the JSON column) still
    gets every prediction, with no write error and nothing dropped (the writer process logs the lost
    explanations)."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_log_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE prediction_explanations (id INTEGER PRIMARY KEY, log_id TEXT)")
    log = PredictionLog(url, Metrics(), batch_size=10)
    log.start()
    log.submit([*_explained_rows(5), log_row(dt.datetime.now(dt.UTC), 9)])
    status = log.close(30)
    assert (status.written, status.write_errors, status.dropped) == (6, 0, 0)
    assert count_rows(url) == 6
    engine.dispose()


def _old_log_and_limited_user(mysql_log_url: str) -> tuple[str, Any]:
    """The log as it was before #22 (no encounter_id), and a URL of a user with the API's grant (SELECT, INSERT,
    CREATE, INDEX as mysql/init-databases.sh gives, no ALTER); the admin engine to clean up with."""
    import uuid

    from sqlalchemy import MetaData, Table, create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(mysql_log_url)
    admin = create_engine(mysql_log_url)
    columns = [column._copy() for column in prediction_log.columns if column.name != "encounter_id"]
    old = Table(prediction_log.name, MetaData(), *columns)  # the pre-#22 definition
    old.create(admin)
    user, password = f"api_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with admin.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(text(f"GRANT SELECT, INSERT, CREATE, INDEX ON {url.database}.* TO '{user}'@'%'"))
    return url.set(username=user, password=password).render_as_string(hide_password=False), admin


def test_a_user_that_may_not_alter_an_old_log_still_logs_without_encounter_ids(
    mysql_log_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployed log from before #22, the API's user without ALTER: predictions are written (without their ids),
    the error says which statements an administrator runs; once they are run, ids are stored."""
    from sqlalchemy import text

    from readmission.outcomes import LogNotReadyError, prepare_log
    from readmission.prediction_table import ADD_ENCOUNTER_COLUMN, ADD_ENCOUNTER_INDEX

    limited, admin = _old_log_and_limited_user(mysql_log_url)
    try:
        writer = _Writer(limited)
        with caplog.at_level(logging.ERROR):
            writer.write([{**_row({"a": 1}, 0), "encounter_id": 7}])
        assert count_rows(mysql_log_url) == 1 and ADD_ENCOUNTER_COLUMN in caplog.text
        with pytest.raises(LogNotReadyError, match="ALTER TABLE prediction_log ADD COLUMN encounter_id"):
            prepare_log(create_log_engine(limited))
        with admin.begin() as conn:  # what README, Operations, tells the administrator to run
            conn.execute(text(ADD_ENCOUNTER_COLUMN))
            conn.execute(text(ADD_ENCOUNTER_INDEX))
        writer._next_column_check = 0.0  # the writer's next check (every 10 minutes) is now
        writer.write([{**_row({"a": 2}, 1), "encounter_id": 8}])
        writer.dispose()
        with admin.connect() as conn:
            ids = conn.execute(text("SELECT encounter_id FROM prediction_log ORDER BY item")).scalars().all()
        assert ids == [None, 8]
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER '{limited.split('://')[1].split(':')[0]}'@'%'"))
        admin.dispose()


@pytest.mark.parametrize(
    "value",
    [{"a": 1, "b": [1.5, None, "x"]}, {"note": "caf\u00e9 \u4e2d \U0001f600", "n": -3}, [], {"": {"k": True}}],
)
def test_json_columns_are_compact_ascii_and_read_back_equal(value: Any) -> None:
    text = _json_text(value)
    assert text.isascii()
    assert ", " not in text and ": " not in text  # compact, whichever encoder wrote it
    assert orjson.loads(text) == value
