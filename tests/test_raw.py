"""RAW ingestion: batches, ledger, idempotency, resume after a crash, quarantine, conflicting sources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from readmission import raw
from readmission.db import create_db_engine
from readmission.errors import LedgerConflictError, SourceFormatError
from readmission.raw import SourceFile, load_raw_batches
from readmission.store_status import raw_status
from readmission.synthetic import synthetic_encounters

UrlFactory = tuple[str, Callable[[], str]]


def _counts(url: str) -> tuple[int, int, int, int]:
    engine = create_db_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT encounter_id) FROM raw_encounters")).one()
        ledger = conn.execute(text("SELECT COUNT(*), COALESCE(SUM(rows_loaded), 0) FROM raw_batches")).one()
    engine.dispose()
    return int(rows[0]), int(rows[1]), int(ledger[0]), int(ledger[1])


def test_batches_are_fixed_slices_with_a_ledger_row_each(db_url_factory: UrlFactory, synthetic_csv: Path) -> None:
    _, new_url = db_url_factory
    url = new_url()
    report = load_raw_batches(create_db_engine(url), SourceFile.read(synthetic_csv, batch_size=1_000))
    assert [b.rows_loaded for b in report.loaded] == [1_000, 1_000, 500]
    engine = create_db_engine(url)
    with engine.connect() as conn:
        ledger = conn.execute(
            text("SELECT batch_number, first_line, last_line, rows_in_batch, batch_size FROM raw_batches ORDER BY 1")
        ).all()
        per_batch = conn.execute(
            text("SELECT batch_number, COUNT(*) FROM raw_encounters GROUP BY batch_number ORDER BY 1")
        ).all()
    assert [tuple(r) for r in ledger] == [
        (0, 1, 1000, 1000, 1000),
        (1, 1001, 2000, 1000, 1000),
        (2, 2001, 2500, 500, 1000),
    ]
    assert [tuple(r) for r in per_batch] == [(0, 1000), (1, 1000), (2, 500)]


def test_second_run_loads_nothing_and_counts_stay(db_url_factory: UrlFactory, synthetic_csv: Path) -> None:
    _, new_url = db_url_factory
    url = new_url()
    source = SourceFile.read(synthetic_csv, batch_size=1_000)
    first = load_raw_batches(create_db_engine(url), source)
    counts = _counts(url)
    second = load_raw_batches(create_db_engine(url), source)
    assert first.rows_loaded == 2_500
    assert second.loaded == []
    assert second.batches_already_loaded == 3
    assert _counts(url) == counts == (2_500, 2_500, 3, 2_500)


def test_next_n_batches_load_incrementally(db_url_factory: UrlFactory, synthetic_csv: Path) -> None:
    _, new_url = db_url_factory
    url = new_url()
    source = SourceFile.read(synthetic_csv, batch_size=1_000)
    steps = [load_raw_batches(create_db_engine(url), source, max_batches=1) for _ in range(4)]
    assert [[b.batch_number for b in s.loaded] for s in steps] == [[0], [1], [2], []]
    assert [s.batches_pending for s in steps] == [2, 1, 0, 0]
    assert raw_status(create_db_engine(url)).rows == 2_500


def test_crash_inside_a_batch_leaves_whole_batches_and_resumes_there(
    db_url_factory: UrlFactory, synthetic_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, new_url = db_url_factory
    url = new_url()
    source = SourceFile.read(synthetic_csv, batch_size=500)
    real_write_rows = raw._write_rows

    def write_then_crash(conn, lines, frame, number):  # type: ignore[no-untyped-def]
        real_write_rows(conn, lines, frame, number)  # the rows of batch 2 reach the database...
        if number == 2:
            raise KeyboardInterrupt("simulated kill while batch 2 is being written")  # ...then the process dies

    monkeypatch.setattr(raw, "_write_rows", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        load_raw_batches(create_db_engine(url), source)
    assert _counts(url) == (1_000, 1_000, 2, 1_000)  # batches 0 and 1 only: batch 2 rolled back whole

    monkeypatch.setattr(raw, "_write_rows", real_write_rows)
    resumed = load_raw_batches(create_db_engine(url), source)
    assert [b.batch_number for b in resumed.loaded] == [2, 3, 4]
    assert _counts(url) == (2_500, 2_500, 5, 2_500)


@pytest.mark.slow
def test_killed_process_resumes_to_exact_full_count(postgres: object, real_data_path: Path, tmp_path: Path) -> None:
    """A real SIGKILL of `readmission load-raw` in the middle of batch 2; the rerun ends with exactly 101,766 rows.

    Where the kill lands does not depend on how fast the loader or this test runs: the test holds batch 2's
    ledger row (its primary key) in an open transaction, so the loader commits batches 0 and 1, writes batch
    2's rows and then waits on that row, and the kill comes once it waits there."""
    url = postgres.create("kill")  # type: ignore[attr-defined]
    env = {**os.environ, "RAW_DATABASE_URL": url, "DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "readmission.cli.app", "load-raw", "--data-path", str(real_data_path)]
    engine = create_db_engine(url)
    raw.create_raw_tables(engine)
    holder = engine.connect()
    hold = holder.begin()
    holder.execute(
        raw.raw_batches.insert().values(
            batch_number=2, first_line=0, last_line=0, rows_in_batch=0, rows_loaded=0, rows_quarantined=0,
            batch_size=0, source_rows=0, checksum="", source_sha256="", loaded_at=datetime.now(UTC),
        )
    )  # fmt: skip
    log = (tmp_path / "load-raw.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # a hang guard: a busy machine only takes longer to get there
        while True:
            with engine.connect() as conn:
                batches = conn.execute(text("SELECT COUNT(*) FROM raw_batches")).scalar_one()  # committed ones
                waiting = conn.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            if batches == 2 and waiting:
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "load-raw.log").read_text()
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        hold.rollback()
        holder.close()
    engine.dispose()
    rows, distinct, ledger_batches, ledger_rows = _counts(url)
    assert ledger_batches == 2, f"the loader was not stopped in batch 2 ({ledger_batches} batches)"
    assert rows == distinct == ledger_rows == 30_000  # batch 2's written rows went with its transaction

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "already loaded" in rerun.stdout
    assert _counts(url) == (101_766, 101_766, 7, 101_766)


def _write_rows_to(path: Path, frame: pd.DataFrame, extra_lines: list[str] = ()) -> Path:  # type: ignore[assignment]
    frame.to_csv(path, index=False)
    if extra_lines:
        with path.open("a") as handle:
            handle.write("\n".join(extra_lines) + "\n")
    return path


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_loaded(db_url_factory: UrlFactory, tmp_path: Path) -> None:
    _, new_url = db_url_factory
    url = new_url()
    frame = synthetic_encounters(40, seed=3)
    frame.loc[3, "race"] = "Martian"
    frame.loc[5, "time_in_hospital"] = "three"
    frame.loc[7, "num_procedures"] = "99"
    frame.loc[9, "admission_type_id"] = "42"
    frame.loc[11, "encounter_id"] = frame.loc[10, "encounter_id"]
    good_line = ",".join(frame.iloc[0].tolist())
    path = _write_rows_to(tmp_path / "bad.csv", frame, [good_line.rsplit(",", 1)[0]])  # one field short

    report = load_raw_batches(create_db_engine(url), SourceFile.read(path, batch_size=1_000))

    assert report.rows_quarantined == 6
    assert report.rows_loaded == 35
    engine = create_db_engine(url)
    with engine.connect() as conn:
        reasons = dict(conn.execute(text("SELECT source_line, reason FROM raw_quarantine")).all())
        ledger = conn.execute(text("SELECT rows_loaded, rows_quarantined FROM raw_batches")).one()
    assert (
        reasons[5]
        == "race: unknown level 'Martian' (allowed: AfricanAmerican, Asian, Caucasian, Hispanic, Other, or ? when unknown)"
    )
    assert reasons[7].startswith("time_in_hospital: 'three' is not a whole number")
    assert reasons[9] == "num_procedures: 99 is above the maximum 10"
    assert reasons[11].startswith("admission_type_id: unknown code '42'")
    assert "appears earlier in the same batch" in reasons[13]
    assert reasons[42] == "record has 49 fields, expected 50"
    assert tuple(ledger) == (35, 6)


def test_ids_already_loaded_from_another_file_are_quarantined_not_duplicated(
    db_url_factory: UrlFactory, tmp_path: Path
) -> None:
    _, new_url = db_url_factory
    url = new_url()
    first = synthetic_encounters(30, seed=1)
    load_raw_batches(create_db_engine(url), SourceFile.read(_write_rows_to(tmp_path / "a.csv", first)))
    second_db_url = url  # same RAW database, a second source whose rows overlap the first
    second = pd.concat(
        [first.iloc[:5], synthetic_encounters(10, seed=99).assign(encounter_id=[str(9_000_000 + i) for i in range(10)])]
    )
    engine = create_db_engine(second_db_url)
    with engine.begin() as conn:  # a different source: start a new ledger, keep the rows
        conn.execute(text("DELETE FROM raw_batches"))
    report = load_raw_batches(engine, SourceFile.read(_write_rows_to(tmp_path / "b.csv", second)))
    assert (report.rows_loaded, report.rows_quarantined) == (10, 5)
    with engine.connect() as conn:
        reasons = [r for (r,) in conn.execute(text("SELECT reason FROM raw_quarantine"))]
        total = conn.execute(text("SELECT COUNT(*) FROM raw_encounters")).scalar_one()
    assert total == 40
    assert all("is already loaded (batch 0)" in r for r in reasons)


def test_different_batch_size_or_file_is_refused_with_a_fix(db_url_factory: UrlFactory, tmp_path: Path) -> None:
    _, new_url = db_url_factory
    url = new_url()
    path = _write_rows_to(tmp_path / "a.csv", synthetic_encounters(300, seed=1))
    load_raw_batches(create_db_engine(url), SourceFile.read(path, batch_size=100))
    with pytest.raises(LedgerConflictError, match="batches of 100 rows, not 50: rerun with --batch-size 100"):
        load_raw_batches(create_db_engine(url), SourceFile.read(path, batch_size=50))
    other = _write_rows_to(tmp_path / "b.csv", synthetic_encounters(300, seed=2))
    with pytest.raises(LedgerConflictError, match="batch 0 in the RAW database differs"):
        load_raw_batches(create_db_engine(url), SourceFile.read(other, batch_size=100))
    assert _counts(url) == (300, 300, 3, 300)  # nothing lost, nothing added


def test_a_file_with_the_wrong_columns_is_refused_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    synthetic_encounters(5).drop(columns=["race"]).rename(columns={"age": "age_years"}).to_csv(path, index=False)
    with pytest.raises(SourceFormatError, match="missing columns: race, age; unexpected columns: age_years"):
        SourceFile.read(path)
