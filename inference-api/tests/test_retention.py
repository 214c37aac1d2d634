"""Prediction-log retention on real databases (SQLite and the shared MariaDB): exactly the rows past the cutoff
go, in chunks no larger than asked, while the API's real writer keeps logging without an error or a lost row;
the CronJob's command (`python -m inference_api.retention`) with a user that may only read and delete."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from logsupport import log_row, seed_log
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine, make_url

from inference_api.metrics import Metrics
from inference_api.prediction_log import PredictionLog
from readmission.db import create_db_engine, normalize_url
from readmission.prediction_table import (
    metadata,
    model_monitoring,
    prediction_explanations,
    prediction_log,
    prediction_outcomes,
)
from readmission.retention import oldest_row_time, purge_prediction_log, retention_cutoff

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(either_log_url: str) -> Iterator[Engine]:
    engine = create_db_engine(either_log_url)
    yield engine
    engine.dispose()


def _count(engine: Engine, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(prediction_log).where(*where)).scalar_one())


class Stream(threading.Thread):
    """Predictions logged through the real PredictionLog (writer process and all), 20 rows every 5 ms."""

    def __init__(self, log: PredictionLog) -> None:
        super().__init__(daemon=True)
        self.log, self.stop, self.submitted = log, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.log.submit([log_row(dt.datetime.now(dt.UTC), i) for i in range(20)])
            self.submitted += 20
            time.sleep(0.005)


def test_the_purge_deletes_old_rows_while_the_api_logs_new_ones(either_log_url: str, engine: Engine) -> None:
    log_url = either_log_url
    now = dt.datetime.now(dt.UTC)
    old = seed_log(engine, [now - dt.timedelta(days=120, seconds=i) for i in range(6_000)])
    kept = seed_log(engine, [now - dt.timedelta(days=89, seconds=i) for i in range(300)])
    log = PredictionLog(log_url, Metrics(), batch_size=50)
    log.start()
    stream = Stream(log)
    stream.start()
    while log.status().written < 200:  # the writer is writing before the purge starts
        time.sleep(0.05)
    written_before = log.status().written
    result = purge_prediction_log(engine, 90, chunk_rows=250, pause_seconds=0.02)
    written_during = log.status().written - written_before
    stream.stop.set()
    stream.join()
    status = log.close(60)
    print(f"{make_url(log_url).get_backend_name()}: {result}; {written_during} rows logged during the purge")
    assert (result.deleted, result.chunks) == (old, 24)
    assert written_during > 0, "the writer logged nothing while the purge ran: the test proves nothing"
    assert (status.write_errors, status.dropped, status.queued, status.last_error) == (0, 0, 0, None)
    assert _count(engine, prediction_log.c.created_at < retention_cutoff(90)) == 0
    assert _count(engine) == kept + stream.submitted == kept + status.written


def test_no_delete_transaction_removes_more_than_a_chunk(engine: Engine) -> None:
    seed_log(engine, [NOW - dt.timedelta(days=100, minutes=i) for i in range(100)] + [NOW] * 5)
    transactions: list[int] = []  # the transaction of each DELETE
    deleted: list[int] = []  # rows each DELETE removed

    @event.listens_for(engine, "begin")
    def _begin(_conn: Any) -> None:
        transactions.append(0)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            transactions[-1] += 1
            deleted.append(cursor.rowcount)

    result = purge_prediction_log(engine, 30, chunk_rows=7, pause_seconds=0, now=NOW)
    assert (result.deleted, result.chunks) == (100, 15) and sum(deleted) == 100
    assert max(deleted) == 7 and len(deleted) == 15  # ceil(100 / 7) chunks of at most 7 rows
    assert all(n <= 1 for n in transactions)  # each DELETE in a transaction of its own
    assert _count(engine) == 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ages_minutes=st.lists(st.integers(0, 400 * 24 * 60), max_size=60),
    days=st.integers(1, 400),
    chunk_rows=st.integers(1, 25),
)
@example(ages_minutes=[24 * 60, 24 * 60 + 1, 0], days=1, chunk_rows=1)  # exactly one day old: kept
def test_exactly_the_rows_older_than_the_cutoff_are_gone(ages_minutes: list[int], days: int, chunk_rows: int) -> None:
    created = [NOW - dt.timedelta(minutes=m) for m in ages_minutes]
    with tempfile.TemporaryDirectory() as folder:
        engine = create_db_engine(f"sqlite:///{folder}/log.db")
        seed_log(engine, created)
        result = purge_prediction_log(engine, days, chunk_rows=chunk_rows, pause_seconds=0, now=NOW)
        with engine.connect() as conn:
            left = sorted(t.replace(tzinfo=dt.UTC) for t in conn.execute(select(prediction_log.c.created_at)).scalars())
        oldest = oldest_row_time(engine)
        engine.dispose()
    cutoff = NOW - dt.timedelta(days=days)
    assert left == sorted(t for t in created if t >= cutoff)  # a row exactly `days` old is kept
    assert result.deleted == len(created) - len(left) and result.cutoff == cutoff
    assert oldest == (left[0] if left else None)


def _retention_job(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"RELOAD_TOKEN", "DEVELOPMENT_MODE"}}
    return subprocess.run(
        [sys.executable, "-m", "inference_api.retention", "--chunk-rows", "100"],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cronjob_command_purges_without_a_reload_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    engine = create_db_engine(url)
    now = dt.datetime.now(dt.UTC)
    seed_log(engine, [now - dt.timedelta(days=31)] * 250 + [now - dt.timedelta(days=29)] * 4)
    done = _retention_job({"PREDICTION_LOG_URL": url, "PREDICTION_LOG_RETENTION_DAYS": "30"}, tmp_path)
    print(done.stderr)
    assert done.returncode == 0, done.stderr
    assert re.search(r"purge: 250 row\(s\) older than \S+ deleted in 3 chunk\(s\)", done.stderr)
    assert _count(engine) == 4
    engine.dispose()


def test_the_cronjob_command_before_the_first_prediction_and_with_a_bad_setting(tmp_path: Path) -> None:
    missing = _retention_job({"PREDICTION_LOG_URL": f"sqlite:///{tmp_path / 'none.db'}"}, tmp_path)
    assert missing.returncode == 0 and "nothing to purge: no prediction log at" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    traced = _retention_job({"PREDICTION_LOG_URL": f"sqlite:///{tmp_path / 'none.db'}", "LOG_LEVEL": "TRACE"}, tmp_path)
    assert traced.returncode == 0, traced.stderr  # "Unknown level: 'TRACE'" before LOG_LEVEL's levels were checked
    bad = _retention_job({"PREDICTION_LOG_RETENTION_DAYS": "0"}, tmp_path)
    assert (
        bad.returncode == 2
        and "PREDICTION_LOG_RETENTION_DAYS: Input should be greater than or equal to 1" in bad.stderr
    )


def _grant_of_the_purge_user() -> str:
    """The GRANT that mysql/init-databases.sh gives the CronJob's user."""
    init = (REPO / "mysql" / "init-databases.sh").read_text()
    (grant,) = re.findall(r"^GRANT .* TO 'inference_purge'@'%';$", init, re.M)
    return grant


def test_the_cronjob_command_on_mysql_as_a_user_that_may_only_read_and_delete(mysql_log_url: str) -> None:
    url = make_url(mysql_log_url)
    user, password = f"purge_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    grant = _grant_of_the_purge_user().replace("inference.", f"{url.database}.").replace("inference_purge", user)
    assert grant.startswith("GRANT SELECT, DELETE ON ")
    admin = create_engine(normalize_url(mysql_log_url))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(text(grant))
    now = dt.datetime.now(dt.UTC)
    seed_log(admin, [now - dt.timedelta(days=100)] * 120 + [now - dt.timedelta(days=1)] * 3)
    purge_url = url.set(username=user, password=password).render_as_string(hide_password=False)
    try:
        done = _retention_job({"PREDICTION_LOG_URL": purge_url, "PREDICTION_LOG_RETENTION_DAYS": "90"}, REPO)
        print(done.stderr)
        assert done.returncode == 0, done.stderr
        assert "purge: 120 row(s) older than" in done.stderr and password not in done.stderr
        assert _count(admin) == 3
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER '{user}'@'%'"))
        admin.dispose()


def test_logged_explanations_go_with_their_predictions(either_log_url: str, engine: Engine) -> None:
    """The explanations' table is purged by the same cutoff, in chunks; newer explanations stay; a log from
    before explanations (no such table) is purged as before (the other tests)."""
    log = PredictionLog(either_log_url, Metrics(), batch_size=50)
    log.start()
    ages = [dt.timedelta(days=120, seconds=i) for i in range(30)] + [dt.timedelta(days=2, seconds=i) for i in range(4)]
    rows = [log_row(NOW - age, i) for i, age in enumerate(ages)]
    for row in rows[::2]:  # every other prediction was asked with explain=true
        row["explanation"] = {"base_value": -2.0, "value": -1.5, "contributions": []}
    log.submit(rows)
    status = log.close(60)
    assert (status.written, status.write_errors) == (34, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(prediction_explanations)).scalar_one() == 17
    result = purge_prediction_log(engine, 90, chunk_rows=4, pause_seconds=0, now=NOW)
    assert (result.deleted, result.explanations_deleted) == (30, 15)
    with engine.connect() as conn:
        left = conn.execute(select(prediction_explanations.c.created_at)).scalars().all()
    assert len(left) == 2 and _count(engine) == 4


def test_outcomes_and_monitor_results_past_the_retention_are_purged(engine: Engine) -> None:
    """Outcomes (by when they were recorded) and monitor results (by run) older than the cutoff go with the log,
    in chunks; newer ones stay."""
    metadata.create_all(engine)
    old, new = NOW - dt.timedelta(days=120), NOW - dt.timedelta(days=2)
    outcome = {"readmitted": "NO", "observed_at": old, "source": "file"}
    run = {
        "run_id": "r", "model_name": "m", "model_version": "1", "window_start": old, "window_end": old,
        "predictions": 0, "with_encounter": 0, "matured": 0, "calibration": [], "drift": {}, "thresholds": {},
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            prediction_outcomes.insert(),
            [{**outcome, "encounter_id": i, "recorded_at": old if i < 9 else new} for i in range(1, 12)],
        )
        conn.execute(model_monitoring.insert(), [{**run, "run_at": old if i < 5 else new} for i in range(7)])
    result = purge_prediction_log(engine, 90, chunk_rows=4, pause_seconds=0, now=NOW)
    assert (result.outcomes_deleted, result.monitoring_deleted) == (8, 5)
    with engine.connect() as conn:
        assert conn.execute(select(prediction_outcomes.c.encounter_id)).scalars().all() == [9, 10, 11]
        assert conn.execute(select(func.count()).select_from(model_monitoring)).scalar_one() == 2
