"""Who may do what on the MLflow server of the manifests (basic-auth app, users Job): README, "Security".

The server runs as tests/support/mlflowstack.py starts it (the pod's init containers, flags and the users Job
of mlflow/, on MariaDB + PostgreSQL + moto). Anonymous requests get 401; the inference user reads the
champion and nothing else; the trainer trains, registers and moves aliases through the `readmission` CLI.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflowstack import (
    ACCESS_SCRIPT,
    Stack,
    container_env,
    free_port,
    generated_secrets,
    http_status,
    pod_containers,
    server_args,
)
from sqlalchemy import create_engine, inspect, text

from readmission.registry import CHAMPION, MODEL_NAME
from readmission.synthetic import write_synthetic_csv
from testsupport import read_env_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mlflow"))
import access  # noqa: E402  (mlflow/access.py: the image's script, not a package)

FAST_TRAINING = {"TRAIN_TIME_BUDGET_SECONDS": "60", "TRAIN_MAX_TRIALS": "1", "TRAIN_FAMILIES": "logistic_regression"}


def _call(stack: Stack, method: str, path: str, user: str | None = None, body: dict[str, Any] | None = None) -> int:
    """HTTP status of a request to the server as ``user`` (trainer, inference, admin; None: anonymous)."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        password = stack.secret["MLFLOW_AUTH_ADMIN_PASSWORD" if user == "admin" else f"MLFLOW_{user.upper()}_PASSWORD"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(stack.tracking + path, data=data, headers=headers, method=method)
    return http_status(request)


def _cli(
    stack: Stack, cwd: Path, *args: str, password: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """The `readmission` CLI as the trainer (the Airflow VM's and an operator's credentials); ``extra``
    variables override."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    env.update(FAST_TRAINING, COLUMNS="200", MLFLOW_TRACKING_URI=stack.tracking, MLFLOW_TRACKING_USERNAME="trainer")
    env["MLFLOW_TRACKING_PASSWORD"] = password or stack.secret["MLFLOW_TRAINER_PASSWORD"]
    env.update(extra)
    command = [sys.executable, "-m", "readmission.cli.app", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(mlflow_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trainer ran the whole job through the CLI and pointed `champion` at its version; returns it."""
    cwd = tmp_path_factory.mktemp("trainer")
    data = write_synthetic_csv(cwd / "data.csv", rows=3_000, seed=7)
    run = _cli(mlflow_stack, cwd, "run", "--data-path", str(data))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    version = run.stdout.split("train: registered diabetes-readmission v", 1)[1].split()[0]
    promote = _cli(mlflow_stack, cwd, "promote", "--version", version)
    assert promote.returncode == 0, promote.stdout + promote.stderr  # the gate ran: reading and tagging work
    rollback = _cli(mlflow_stack, cwd, "rollback", version)
    assert rollback.returncode == 0, rollback.stderr
    assert f"rollback: champion is now v{version}" in rollback.stdout  # the trainer moves the alias
    return version


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=diabetes-readmission"),
        ("GET", f"/api/2.0/mlflow/registered-models/alias?name={MODEL_NAME}&alias={CHAMPION}"),
        ("POST", "/api/2.0/mlflow/registered-models/alias"),
        ("POST", "/api/2.0/mlflow/model-versions/create"),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts?path=1"),
        ("GET", "/api/2.0/mlflow/users/current"),
        ("GET", "/metrics"),
    ],
)
def test_anonymous_requests_get_401(mlflow_stack: Stack, method: str, path: str) -> None:
    assert _call(mlflow_stack, method, path, body={} if method == "POST" else None) == 401


def test_a_wrong_password_gets_401(mlflow_stack: Stack) -> None:
    request = urllib.request.Request(
        mlflow_stack.tracking + "/api/2.0/mlflow/users/current",
        headers={"Authorization": "Basic " + base64.b64encode(b"trainer:not-its-password").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


@pytest.fixture
def as_inference(mlflow_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's MLflow client is the inference API's: its user, the stack's server for tracking and
    registry (an earlier test may have left MLflow's process-wide registry URI elsewhere), no S3 access."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "inference")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(mlflow_stack.tracking)
    mlflow.set_registry_uri(mlflow_stack.tracking)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.mark.usefixtures("as_inference")
def test_the_inference_user_loads_the_champion_and_cannot_change_anything(mlflow_stack: Stack, trained: str) -> None:
    client = mlflow.MlflowClient(mlflow_stack.tracking, registry_uri=mlflow_stack.tracking)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == trained
    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert hasattr(model, "predict_proba")

    alias = {"name": MODEL_NAME, "alias": CHAMPION, "version": "1"}
    assert _call(mlflow_stack, "POST", "/api/2.0/mlflow/registered-models/alias", "inference", alias) == 403
    version = {"name": MODEL_NAME, "source": f"models:/{MODEL_NAME}/{trained}"}
    assert _call(mlflow_stack, "POST", "/api/2.0/mlflow/model-versions/create", "inference", version) == 403
    delete = {"name": MODEL_NAME, "version": trained}
    assert _call(mlflow_stack, "DELETE", "/api/2.0/mlflow/model-versions/delete", "inference", delete) == 403
    with pytest.raises(mlflow.exceptions.MlflowException, match="403"):
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, trained)
    experiment = client.get_experiment_by_name("diabetes-readmission")
    assert experiment is not None
    with pytest.raises(mlflow.exceptions.MlflowException, match="403"):
        client.create_run(experiment.experiment_id)


def test_the_trainer_cannot_delete_versions_or_manage_users(mlflow_stack: Stack, trained: str) -> None:
    delete = {"name": MODEL_NAME, "version": trained}
    assert _call(mlflow_stack, "DELETE", "/api/2.0/mlflow/model-versions/delete", "trainer", delete) == 403
    user = {"username": "intruder", "password": "a-password-long-enough"}
    assert _call(mlflow_stack, "POST", "/api/2.0/mlflow/users/create", "trainer", user) == 403


def test_the_cli_names_the_credentials_when_the_server_refuses_them(mlflow_stack: Stack, tmp_path: Path) -> None:
    refused = _cli(mlflow_stack, tmp_path, "models", password="not-the-trainer-password")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "MLflow refused the credentials of user trainer (401)" in refused.stderr
    assert "MLFLOW_TRACKING_USERNAME" in refused.stderr and "MLFLOW_TRACKING_PASSWORD" in refused.stderr


def test_the_cli_says_which_user_lacks_the_permission(mlflow_stack: Stack, trained: str, tmp_path: Path) -> None:
    as_inference = {"MLFLOW_TRACKING_USERNAME": "inference"}
    forbidden = _cli(
        mlflow_stack,
        tmp_path,
        "rollback",
        trained,
        password=mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"],
        **as_inference,
    )
    assert forbidden.returncode != 0 and "Traceback" not in forbidden.stderr
    assert "MLflow user inference may not do this (403)" in forbidden.stderr, forbidden.stderr


def _auth_tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the user store (password hashes included), in a stable order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            return {n: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{n}"'))), key=repr) for n in names}
    finally:
        engine.dispose()


def test_the_users_job_run_again_changes_nothing(mlflow_stack: Stack) -> None:
    before = _auth_tables(mlflow_stack.auth_db)
    again = mlflow_stack.run_users_job()
    assert again.returncode == 0, again.stderr
    assert _auth_tables(mlflow_stack.auth_db) == before
    lines = again.stdout.splitlines()
    assert len(lines) == 6 and all(line.endswith(": unchanged") for line in lines), again.stdout
    assert {"users", "role_permissions"} <= set(before)  # the snapshot did see the users and their grants


def test_a_rotated_password_is_applied_by_the_job_and_the_old_one_stops_working(mlflow_stack: Stack) -> None:
    old = mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"]
    new = "rotated-" + old
    try:
        rotated = mlflow_stack.run_users_job(MLFLOW_INFERENCE_PASSWORD=new)
        assert rotated.returncode == 0, rotated.stderr
        assert "user inference: password updated" in rotated.stdout
        mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"] = new
        assert _call(mlflow_stack, "GET", "/api/2.0/mlflow/users/current", "inference") == 200
        mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"] = old
        assert _call(mlflow_stack, "GET", "/api/2.0/mlflow/users/current", "inference") == 401
    finally:
        mlflow_stack.secret["MLFLOW_INFERENCE_PASSWORD"] = old
        assert mlflow_stack.run_users_job().returncode == 0


def test_the_job_names_a_wrong_admin_password(mlflow_stack: Stack) -> None:
    # A refused password does not change by waiting: the Job stops at once, not after ACCESS_WAIT_SECONDS (an
    # hour here: run_users_job's own 300 s timeout fails the test if it waits).
    done = mlflow_stack.run_users_job(MLFLOW_AUTH_ADMIN_PASSWORD="not-the-admin-password", ACCESS_WAIT_SECONDS="3600")
    assert done.returncode == 2
    assert "refused the admin's credentials" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password1234", "the admin password older MLflow versions shipped"),
        ("short-one", "use at least 16"),
        ("", "MLFLOW_AUTH_ADMIN_PASSWORD is empty"),
    ],
)
def test_the_pod_does_not_start_with_a_default_short_or_missing_admin_password(
    tmp_path: Path, password: str, reason: str
) -> None:
    """The init container `auth-config`, run with its manifest environment: exit 2 naming the variable."""
    spec = pod_containers()["auth-config"]
    secret = {**generated_secrets(), "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    env = container_env(spec, {}, secret, {})
    target = tmp_path / "basic_auth.ini"
    assert spec["command"][:2] == ["python", ACCESS_SCRIPT] and spec["command"][2] == "config"
    command = [sys.executable, str(REPO / "mlflow" / "access.py"), "config", str(target)]
    done = subprocess.run(command, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not target.exists()
    good = subprocess.run(
        command,
        env={"PATH": os.environ["PATH"], **container_env(spec, {}, generated_secrets(), {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0 and target.stat().st_mode & 0o777 == 0o600, good.stderr  # the same command works


def test_mlflow_itself_refuses_the_default_admin_password_on_a_new_user_store(
    mlflow_stack: Stack, postgres: Any, tmp_path: Path
) -> None:
    """Past our init container, the server (MLflow's own check) does not start with it either."""
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = {postgres.create('auth')}\n"
        "admin_username = admin\n"
    )
    spec = mlflow_stack.containers["mlflow"]
    env = {**os.environ, **container_env(spec, read_env_file(REPO / "mlflow" / "config.env"), mlflow_stack.secret, {})}
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": access.PUBLISHED_DEFAULT_ADMIN})
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [a for a in server_args(spec, env, free_port()) if not a.startswith(("--expose-prometheus", "--artifacts"))]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "Refusing to use the insecure default password" in done.stderr + done.stdout


_PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))


@settings(max_examples=200, deadline=None)
@given(
    uri=st.text(_PRINTABLE, min_size=1).map(str.strip).filter(bool),
    password=st.text(_PRINTABLE, min_size=16).filter(lambda p: p != access.PUBLISHED_DEFAULT_ADMIN),
)
def test_the_config_file_reads_back_the_user_store_url_exactly(uri: str, password: str) -> None:
    """Any URL (``%`` included, which configparser would read as interpolation) survives the INI file."""
    env = {
        "MLFLOW_AUTH_DATABASE_URI": uri,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        written = access.auth_config_text()
    parser = configparser.ConfigParser()
    parser.read_string(written)
    assert parser["mlflow"]["database_uri"] == uri
    assert parser["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in written  # MLflow reads it from the environment, never from the file


def _patch_password(stack: Stack, current: str, new: str) -> int:
    """The README's admin rotation: the admin changes its own password (MLflow wants the current one too)."""
    body = json.dumps({"username": "admin", "password": new, "current_password": current}).encode()
    basic = base64.b64encode(f"admin:{current}".encode()).decode()
    request = urllib.request.Request(
        stack.tracking + "/api/2.0/mlflow/users/update-password",
        data=body,
        method="PATCH",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
    )
    return http_status(request)


def test_the_admin_password_rotates_as_the_readme_says(mlflow_stack: Stack) -> None:
    """Change it through the API, then the new value in mlflow/secrets.env serves the probe and the Job."""
    old = mlflow_stack.secret["MLFLOW_AUTH_ADMIN_PASSWORD"]
    new = "rotated-admin-" + old
    probe = [*mlflow_stack.command("users")[:-1], "probe"]
    env = {**mlflow_stack.job_env, "MLFLOW_PORT": str(mlflow_stack.port)}
    assert _patch_password(mlflow_stack, old, new) == 200
    try:
        assert subprocess.run(probe, env={**env, "MLFLOW_AUTH_ADMIN_PASSWORD": new}, timeout=30).returncode == 0
        assert subprocess.run(probe, env=env, timeout=30).returncode == 1  # the old one no longer works
        again = mlflow_stack.run_users_job(MLFLOW_AUTH_ADMIN_PASSWORD=new)
        assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    finally:
        assert _patch_password(mlflow_stack, new, old) == 200


def test_the_cli_reads_the_mlflow_user_from_dotenv(mlflow_stack: Stack, trained: str, tmp_path: Path) -> None:
    """MLflow reads its variables from the environment only; `.env` lists them, so the CLI carries them over
    (was: 'refused the credentials (401)' with the right user and password in `.env`)."""
    (tmp_path / ".env").write_text(
        f"MLFLOW_TRACKING_URI={mlflow_stack.tracking}\nMLFLOW_TRACKING_USERNAME=trainer\n"
        f"MLFLOW_TRACKING_PASSWORD={mlflow_stack.secret['MLFLOW_TRAINER_PASSWORD']}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    command = [sys.executable, "-m", "readmission.cli.app", "models"]
    done = subprocess.run(
        command, cwd=tmp_path, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"champion v{trained}" in done.stdout


@pytest.mark.usefixtures("as_inference")
def test_the_api_does_not_vouch_for_a_model_its_user_may_not_read(mlflow_stack: Stack, trained: str) -> None:
    """MLflow answers 403, not 404, for a model deleted or renamed since the grant: the API's registry
    source reads that as "the alias is gone" (no `champion` label), not as an outage."""
    from inference_api.model_manager import AliasNotFoundError, ModelSource

    assert ModelSource(mlflow_stack.tracking, MODEL_NAME, CHAMPION).resolve().version == trained
    with pytest.raises(AliasNotFoundError, match=r"may not read model 'diabetes-readmission-renamed' \(403\)"):
        ModelSource(mlflow_stack.tracking, "diabetes-readmission-renamed", CHAMPION).resolve()


@pytest.mark.usefixtures("as_inference")
def test_the_inference_user_reads_the_history_plots_and_importance_the_page_shows(
    mlflow_stack: Stack, trained: str
) -> None:
    """What GET /model/versions, /model/plots/{name} and /model/importance read, through the server's artifact
    proxy, as the API's read-only user: its READ grants cover the version list and the run's artifacts."""
    from inference_api.model_details import PLOT_NAMES, ArtifactCache, plot_path, version_history
    from readmission.names import IMPORTANCE_ARTIFACT

    client = mlflow.MlflowClient(mlflow_stack.tracking, registry_uri=mlflow_stack.tracking)
    history = version_history(client, MODEL_NAME, trained)
    served = next(v for v in history if v.version == trained)
    assert served.serving and CHAMPION in served.aliases and served.decision == "promoted"
    assert served.reason and served.rollback_reason and served.rollback_reason.startswith("manual rollback")
    cache = ArtifactCache()
    assert {plot_path(name) for name in PLOT_NAMES} <= cache.listing(client, served.run_id)
    for name in PLOT_NAMES:
        assert cache.read(client, served.run_id, plot_path(name)).startswith(b"\x89PNG")
    importance = json.loads(cache.read(client, served.run_id, IMPORTANCE_ARTIFACT))
    assert importance and all(isinstance(v, float) for v in importance.values())
