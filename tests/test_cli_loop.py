"""The closed loop's commands as a user runs them (`readmission outcomes`, `monitor`, `replay`) and the monitor's job
(`python -m inference_api.monitor`): one-line summaries, one-line errors with exit 1 (the job: 2 for a setting), on
the embedded log and a real local registry (tests/support/livesupport.py)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livesupport import Champion, free_port, train_champion
from logsupport import log_row
from sqlalchemy import func, inspect, select

from readmission import schema
from readmission.db import create_db_engine
from readmission.names import MODEL_NAME
from readmission.outcomes import check_outcomes, record_outcomes
from readmission.prediction_table import prediction_log, prediction_outcomes

EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())
HEADER = "encounter_id,readmitted,observed_at\n"
OWN_SETTINGS = ("DATA_", "RAW_", "CLEAN_", "PREDICTION_LOG", "MLFLOW_", "MONITOR_", "AIRFLOW_")


# These logs hold 40 predictions made an hour ago, their outcomes fed at once (as a replay does): judge them all.
SMALL_LOG = {"MONITOR_MIN_OUTCOMES": "40", "MONITOR_OUTCOME_HORIZON_DAYS": "0", "MONITOR_MIN_DRIFT_PREDICTIONS": "1"}


def _run(command: list[str], cwd: Path, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
    return subprocess.run(
        command, cwd=cwd, env={**clean_env, **(env or {}), "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=900,  # a hang guard, not a speed limit
    )  # fmt: skip


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "readmission.cli.app", *args], cwd, env)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error line of a command that failed as it should: exit 1, one line, no traceback."""
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _seed(folder: Path, risks: list[float], outcomes: dict[int, str] | None = None) -> str:
    """The embedded log of ``folder`` (DATA_DIR var): version 1 predicted encounters 1.. with ``risks`` an hour ago,
    as the API logs them (the example patients' inputs), and ``outcomes`` recorded; its URL."""
    url = f"sqlite:///{folder / 'var' / 'predictions.db'}"
    (folder / "var").mkdir(exist_ok=True)
    engine = create_db_engine(url)
    prediction_log.create(engine)
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rows = [
        {**log_row(at, i, EXAMPLES[i % 3]), "model_name": MODEL_NAME, "model_version": "1", "encounter_id": i + 1,
         "probability_within_30": risk, "risk_band": "low" if risk < 0.15 else "medium" if risk < 0.3 else "high"}
        for i, risk in enumerate(risks)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(prediction_log.insert(), rows)
    if outcomes:
        feed = [{"encounter_id": e, "readmitted": r, "observed_at": "2025-05-01"} for e, r in outcomes.items()]
        record_outcomes(engine, check_outcomes(feed, "test"), "file")
    engine.dispose()
    return url


def _degraded(folder: Path) -> str:
    """40 matured encounters ranked backwards by their risk (live ROC-AUC 0), of the drifted example patients."""
    return _seed(
        folder, [0.05 + 0.9 * i / 40 for i in range(40)], {i + 1: "<30" if i < 10 else "NO" for i in range(40)}
    )


def _outcomes_stored(url: str) -> int:
    engine = create_db_engine(url)
    try:
        if not inspect(engine).has_table(prediction_outcomes.name):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(prediction_outcomes)).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """A real local registry (v1 with its reference profile and test ROC-AUC) and its CLEAN database."""
    return train_champion(tmp_path_factory.mktemp("registry"))


def test_outcomes_records_a_file_once_and_says_what_it_did_in_one_line(tmp_path: Path) -> None:
    url = _seed(tmp_path, [0.1, 0.2])
    (tmp_path / "outcomes.csv").write_text(
        HEADER + "1,<30,2025-05-01\n2,NO,2025-05-02T10:00:00+02:00\n999,NO,2025-05-01\n"
    )
    first, again = (_cli("outcomes", "outcomes.csv", cwd=tmp_path) for _ in range(2))
    unknown = "1 unknown encounter(s) (no logged prediction with that encounter_id; not stored) e.g. [999]"
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"outcomes: 3 outcome(s): 2 recorded, 0 already recorded (same label), {unknown}"
    assert again.stdout.strip() == f"outcomes: 3 outcome(s): 0 recorded, 2 already recorded (same label), {unknown}"
    assert _outcomes_stored(url) == 2


def test_a_bad_outcome_file_names_the_lines_and_fields_and_records_nothing(tmp_path: Path) -> None:
    url = _seed(tmp_path, [0.1, 0.2, 0.3])
    (tmp_path / "bad.csv").write_text(HEADER + "1,<30,2025-05-01\n2,maybe,2025-05-01\n3,NO,tomorrow\n")
    error = _one_line_error(_cli("outcomes", "bad.csv", cwd=tmp_path))
    assert error.startswith("error: bad.csv: 2 bad outcome(s), nothing recorded: line 3 readmitted: 'maybe' is not")
    assert "; line 4 observed_at: 'tomorrow' is not an ISO 8601 time" in error
    assert _outcomes_stored(url) == 0
    missing = _one_line_error(_cli("outcomes", "missing.csv", cwd=tmp_path))
    assert missing == "error: cannot read missing.csv: No such file or directory"


def test_monitor_on_the_embedded_log_prints_the_tables_and_the_action(tmp_path: Path, champion: Champion) -> None:
    _degraded(tmp_path)
    env = {"MLFLOW_TRACKING_URI": champion.tracking_uri, **SMALL_LOG}
    done = _cli("monitor", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for title in ("Served versions", "Calibration, version 1", "Top drifting inputs, version 1"):
        assert title in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(
        "monitor: 1 version(s) served in the window; action: not triggered (retraining trigger off: set "
        "AIRFLOW_API_URL): version 1: live ROC-AUC 0.0000 is 0.69"
    )
    assert "(40 matured outcomes); " in last and " input(s) drifted past PSI 0.25: " in last


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--where", "nosuch=1"], "error: --where 'nosuch=1': write FIELD=VALUE with a CLEAN column, e.g. age=[70-80)"),
        (["--where", "age"], "error: --where 'age': write FIELD=VALUE with a CLEAN column, e.g. age=[70-80)"),
        (["--where", "age=[200-300)"], "error: no test encounter matches age=[200-300)"),
        (["--api-url", "ftp://api"], "error: --api-url must be an http:// or https:// address, got 'ftp://api'"),
        (["--api-url", "http://127.0.0.1:{port}"], "error: cannot reach http://127.0.0.1:{port}/outcomes: "),
    ],
    ids=["unknown-column", "no-equals-sign", "no-match", "not-http", "unreachable-api"],
)
def test_replay_refuses_a_bad_where_and_an_unreachable_api_in_one_line(
    tmp_path: Path, champion: Champion, options: list[str], said: str
) -> None:
    port = str(free_port())
    options = [o.replace("{port}", port) for o in options]
    done = _cli("replay", "--limit", "3", *options, cwd=tmp_path, env={"CLEAN_DATABASE_URL": champion.clean_url})
    error = _one_line_error(done)
    assert error.startswith(said.replace("{port}", port)), error
    if "cannot reach" in said:
        assert error.endswith("Connection refused; is the API running?"), error


def _monitor_job(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "inference_api.monitor"], cwd, env)


def test_the_monitor_job_exits_2_on_an_invalid_setting_1_on_a_dead_log_and_0_on_a_run(
    tmp_path: Path, champion: Champion
) -> None:
    invalid = _monitor_job(tmp_path, {"MONITOR_AUC_DROP": "2"})
    assert (
        invalid.returncode == 2 and "invalid setting (MONITOR_AUC_DROP: Input should be less than 1)" in invalid.stderr
    )
    dead = _monitor_job(tmp_path, {"PREDICTION_LOG_URL": "mysql://nobody:secret-pw@127.0.0.1:9/log"})
    assert dead.returncode == 1 and "monitor run failed: " in dead.stderr and "secret-pw" not in dead.stderr
    log_url = _degraded(tmp_path)
    env = {"PREDICTION_LOG_URL": log_url, "MLFLOW_TRACKING_URI": champion.tracking_uri, **SMALL_LOG}
    done = _monitor_job(tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "version 1: 40 predictions, 40/40 matured, live ROC-AUC 0.0000 (test 0.69" in done.stderr
    assert "action: not triggered (retraining trigger off: set AIRFLOW_API_URL): version 1: " in done.stderr


def test_monitor_refuses_an_empty_window_and_an_airflow_url_without_its_password(tmp_path: Path) -> None:
    """Before: --window-days 0 ran and stored an empty run (the API then exported no quality at all), and an
    AIRFLOW_API_URL without AIRFLOW_PASSWORD tried to sign in with an empty password at every breach."""
    empty = _cli("monitor", "--window-days", "0", cwd=tmp_path)
    assert empty.returncode == 2 and "--window-days" in empty.stderr and "more than 0" in empty.stderr, empty.stderr
    log = _seed(tmp_path, [0.1])
    env = {"PREDICTION_LOG_URL": log, "AIRFLOW_API_URL": "http://127.0.0.1:9", "AIRFLOW_PASSWORD": ""}
    error = _one_line_error(_cli("monitor", cwd=tmp_path, env=env))
    assert "AIRFLOW_API_URL is set (http://127.0.0.1:9) but AIRFLOW_PASSWORD is empty" in error, error
