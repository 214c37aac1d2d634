"""The retraining trigger (readmission.retraining) against a real Airflow 3 API server.

One server for the module, from the Airflow virtualenv (`make .venv-airflow`, as tests/test_airflow_dag.py):
a scratch AIRFLOW_HOME with SQLite, the real DAG folder (airflow/dags) serialized by `airflow dags reserialize`
(no DAG processor, no scheduler: runs stay queued), the simple auth manager with an admin and a viewer whose
passwords are written beforehand, then `airflow api-server --apps core`. The failures that need no server
(unreachable, silent, conf that is not JSON) run without it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from livesupport import free_port, serve
from logsupport import log_row
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from readmission.cli.monitor_run import retraining_trigger
from readmission.cli.settings import Settings
from readmission.db import create_db_engine
from readmission.errors import ReadmissionError
from readmission.monitoring import Thresholds, last_trigger, run_monitor
from readmission.outcomes import check_outcomes, record_outcomes
from readmission.prediction_table import prediction_log
from readmission.retraining import AirflowTarget, trigger_dag_run
from testsupport import _unavailable

REPO = Path(__file__).resolve().parents[1]
DAG_ID = "1-diabetes-training-pipeline"
ADMIN_PASSWORD = "admin-test-password"
VIEWER_PASSWORD = "viewer-test-password"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass(frozen=True)
class Airflow:
    url: str
    start_seconds: float  # migrate + reserialize + the API server up


def _airflow_env(home: Path) -> dict[str, str]:
    """A scratch Airflow: no AIRFLOW_* of the caller's environment, the real DAGs, two users of known passwords."""
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": ADMIN_PASSWORD, "watcher": VIEWER_PASSWORD}), encoding="utf-8")
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,watcher:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """A real Airflow 3 API server that knows the training DAG (paused, as a new DAG is)."""
    airflow = Path(os.environ.get("AIRFLOW_VENV") or REPO / ".venv-airflow") / "bin" / "airflow"
    if not airflow.is_file():
        _unavailable(f"no Airflow at {airflow}: run `make .venv-airflow/.installed`")
    started = time.monotonic()
    home = tmp_path_factory.mktemp("airflow-api")
    env = _airflow_env(home)
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([str(airflow), *command], env=env, cwd=home, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"airflow {' '.join(command)}: {(done.stdout + done.stderr)[-3000:]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(airflow),
        "api-server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--apps",
        "core",
    ]
    for _ in serve(command, env, f"{url}/api/v2/monitor/health", home / "api-server.log", process_group=True):
        seconds = time.monotonic() - started
        print(f"\nAirflow API server ready in {seconds:.1f} s (db migrate, dags reserialize, api-server)")
        yield Airflow(url, seconds)


def _as_admin(airflow: Airflow, method: str, path: str, **kwargs: Any) -> Any:
    """The test's own look at Airflow, as the admin: the JSON answer of ``method path``."""
    login = {"username": "admin", "password": ADMIN_PASSWORD}
    token = requests.post(f"{airflow.url}/auth/token", json=login, timeout=30).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    answer = requests.request(method, f"{airflow.url}{path}", headers=headers, timeout=30, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _refusal(*args: Any, **kwargs: Any) -> str:
    """The one-line message of the ``ReadmissionError`` that ``trigger_dag_run(*args)`` raises."""
    with pytest.raises(ReadmissionError) as caught:
        trigger_dag_run(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_a_trigger_creates_a_queued_run_with_the_conf_and_warns_that_the_dag_is_paused(
    airflow_api: Airflow, caplog: pytest.LogCaptureFixture
) -> None:
    note = "monitor: live ROC-AUC 0.61 < test 0.68 - 0.05"
    conf = {"reason": note, "source": "monitor", "max_batches": 1}  # keys the DAG does not declare are kept
    with caplog.at_level(logging.INFO, logger="readmission.retraining"):
        run_id = trigger_dag_run(airflow_api.url, "admin", ADMIN_PASSWORD, DAG_ID, conf, note)
    run = _as_admin(airflow_api, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
    assert run["dag_run_id"] == run_id and run["conf"] == conf and run["note"] == note
    assert run["run_type"] == "manual" and run["triggered_by"] == "rest_api" and run["triggering_user_name"] == "admin"
    assert run["logical_date"] is None and run["state"] == "queued"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the DAG is paused" in warnings[0], warnings
    assert f"`airflow dags unpause {DAG_ID}`" in warnings[0]
    assert ADMIN_PASSWORD not in caplog.text


def test_the_target_says_what_it_did_and_an_unpaused_dag_gives_no_warning(
    airflow_api: Airflow, caplog: pytest.LogCaptureFixture
) -> None:
    target = AirflowTarget(airflow_api.url, "admin", ADMIN_PASSWORD, DAG_ID)
    assert ADMIN_PASSWORD not in repr(target)
    paused = target.trigger({}, "first")
    assert paused.startswith("run manual__") and f"of DAG {DAG_ID} at {airflow_api.url} (the DAG is paused" in paused
    assert _as_admin(airflow_api, "PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="readmission.retraining"):
        done = target.trigger({"max_batches": 0}, "second")
    assert done.endswith(f"of DAG {DAG_ID} at {airflow_api.url}") and "paused" not in caplog.text
    run_id = done.split()[1]
    assert _as_admin(airflow_api, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["note"] == "second"


def _dag_run(airflow: Airflow, run_id: str) -> Any:
    return _as_admin(airflow, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")


def _log_ranked_backwards(path: Path, n: int = 20) -> Engine:
    """A SQLite log whose version 1 answered ``n`` matured encounters in reverse order of their risk (live ROC-AUC 0)."""
    engine = create_db_engine(f"sqlite:///{path}")
    prediction_log.create(engine)
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rows = [{**log_row(at, i), "encounter_id": i + 1, "probability_within_30": i / n} for i in range(n)]
    with engine.begin() as conn:
        conn.execute(prediction_log.insert(), rows)
    labels = ["<30" if i < n // 2 else "NO" for i in range(n)]
    feed = [{"encounter_id": i + 1, "readmitted": r, "observed_at": "2025-05-01"} for i, r in enumerate(labels)]
    record_outcomes(engine, check_outcomes(feed, "test"), "file")
    return engine


def _test_auc_only(_name: str, _version: str) -> tuple[float | None, dict[str, Any] | None, str | None]:
    return 0.9, None, "no reference profile in this test"


def test_the_monitors_trigger_from_the_settings_starts_a_dag_run_and_the_monitor_stores_it(
    airflow_api: Airflow, tmp_path: Path
) -> None:
    password = SecretStr(ADMIN_PASSWORD)
    trigger = retraining_trigger(
        Settings(airflow_api_url=airflow_api.url, airflow_username="admin", airflow_password=password)
    )
    assert trigger is not None and retraining_trigger(Settings(airflow_api_url="")) is None
    said = trigger("called directly")
    run = _dag_run(airflow_api, said.split()[1])
    assert said.startswith(f"run {run['dag_run_id']} of DAG {DAG_ID} at {airflow_api.url}")
    assert (run["conf"], run["note"]) == ({"reason": "called directly", "source": "monitor"}, "called directly")
    engine = _log_ranked_backwards(tmp_path / "predictions.db")
    report = run_monitor(engine, _test_auc_only, Thresholds(min_outcomes=20), dt.timedelta(days=1), trigger)
    assert report.action is not None and report.action.startswith("triggered run manual__"), report.action
    run = _dag_run(airflow_api, report.action.split()[2])
    assert run["note"] == "version 7: live ROC-AUC 0.0000 is 0.9000 below the test ROC-AUC 0.9000 (20 matured outcomes)"
    assert run["conf"] == {"reason": run["note"], "source": "monitor"} and report.action.endswith(f": {run['note']}")
    assert last_trigger(engine) == report.run_at  # stored: the next run within the cooldown will not trigger
    engine.dispose()


def test_a_wrong_password_is_refused_naming_the_credentials(airflow_api: Airflow) -> None:
    message = _refusal(airflow_api.url, "admin", "not-the-password", DAG_ID, {}, "x")
    assert message.startswith(f"Airflow at {airflow_api.url}/auth/token refused the credentials of user admin")
    assert "(HTTP 401: Invalid credentials)" in message and "check the Airflow username and password" in message
    assert "not-the-password" not in message


def test_a_viewer_may_not_trigger_and_is_told_which_role_can(airflow_api: Airflow) -> None:
    message = _refusal(airflow_api.url, "watcher", VIEWER_PASSWORD, DAG_ID, {}, "x")
    assert message.startswith(
        f"Airflow at {airflow_api.url}/api/v2/dags/{DAG_ID}/dagRuns refused a run of DAG {DAG_ID}"
    )
    assert "for user watcher (HTTP 403: Forbidden)" in message and "(simple auth manager: user, op or admin" in message


def test_an_unknown_dag_is_named(airflow_api: Airflow) -> None:
    message = _refusal(airflow_api.url, "admin", ADMIN_PASSWORD, "no-such-dag", {}, "x")
    assert "(HTTP 404: The Dag with ID: `no-such-dag` was not found)" in message
    assert "DAG no-such-dag is unknown to this Airflow: check the DAG id" in message


def test_a_conf_the_dag_params_reject_is_refused_with_airflows_reason(airflow_api: Airflow) -> None:
    message = _refusal(airflow_api.url, "admin", ADMIN_PASSWORD, DAG_ID, {"max_batches": "all"}, "x")
    assert "(HTTP 400: Invalid input for param max_batches: 'all' is not of type 'null', 'integer')" in message
    assert message.endswith("make the conf match the DAG's params (or fix the DAG's import errors)")


def test_a_url_that_is_not_the_base_url_says_which_url_to_give(airflow_api: Airflow) -> None:
    message = _refusal(f"{airflow_api.url}/api/v2", "admin", ADMIN_PASSWORD, DAG_ID, {}, "x")
    assert message.startswith(
        f"Airflow at {airflow_api.url}/api/v2/auth/token refused the credentials of user admin (HTTP 4"
    )
    assert "give the API server's base URL, e.g. http://airflow-apiserver:8080, without /api/v2" in message


def test_an_unreachable_airflow_is_named_without_the_password_in_its_url() -> None:
    port = free_port()
    message = _refusal(f"http://admin:secret-in-url@127.0.0.1:{port}", "admin", "pw", DAG_ID, {}, "x")
    assert message.startswith(f"Airflow at http://127.0.0.1:{port}/auth/token is unreachable (")
    assert "Connection refused" in message and "that the API server runs" in message
    assert "secret-in-url" not in message


def test_a_silent_airflow_times_out_naming_the_url() -> None:
    with socket.socket() as listener:  # accepts connections (the backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        message = _refusal(url, "admin", "pw", DAG_ID, {}, "x", timeout=0.5)
    assert message.startswith(f"Airflow at {url}/auth/token did not answer within 0.5 s")


def test_a_conf_that_is_not_json_is_refused_before_any_call() -> None:
    message = _refusal(f"http://127.0.0.1:{free_port()}", "admin", "pw", DAG_ID, {"psi": float("nan")}, "x")
    assert message.startswith(f"the conf of the run of DAG {DAG_ID} is not JSON (Out of range float values")
