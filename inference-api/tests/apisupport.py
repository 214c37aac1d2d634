"""Helpers and fixtures of the API tests (conftest.py registers the fixtures; test modules import the helpers
from here: a module name of its own, so several test folders can run in one pytest session): a real registry with trained versions, real servers, real databases.

- ``registry``: a local MLflow store (SQLite + artifact folder) with two versions of
  ``diabetes-readmission`` trained by the project's own training job (synthetic encounters, so it is fast).
- ``ApiServer``: the app under a real uvicorn server on a free port (real HTTP, real lifespan, the service's
  HTTP protocol).
- ``mysql_log_url``: a scratch database on the MariaDB of ``TEST_MYSQL_URL``.
- ``PrivateMariaDB``: a MariaDB server of the test's own (own data folder and port) that a test may stop
  and start again without touching the shared one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from inference_api.__main__ import server_config
from inference_api.app import create_app
from inference_api.settings import ApiSettings
from readmission.db import normalize_url
from readmission.registry import MODEL_NAME
from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig, prepare_tracking


def _unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_TEST_SERVICES") == "1":
        pytest.fail(f"{reason} (REQUIRE_TEST_SERVICES=1, so this is a failure, not a skip)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    """A local MLflow store holding versions 1 and 2 of the model."""

    uri: str
    folder: Path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    folder = tmp_path_factory.mktemp("registry")
    clean = build_synthetic_clean(folder, rows=5_000, seed=5, split_seed=1)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = (folder / "artifacts").as_uri()
    prepare_tracking(uri, artifacts)
    for seed in (0, 1):
        config = TrainConfig(
            families=("hist_gradient_boosting",), time_budget_seconds=60, max_trials=1, importance_rows=200, seed=seed
        )
        train_job(str(clean.url), uri, config, artifact_location=artifacts, log=lambda _line: None)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")) == [1, 2]
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    return Registry(uri, folder)


def settings_for(registry_uri: str, log_url: str, **overrides: Any) -> ApiSettings:
    """Settings of a test app: fast polling, nothing from a .env file, development mode (no reload token)
    unless the test gives one."""
    values: dict[str, Any] = {
        "development_mode": True,
        "mlflow_tracking_uri": registry_uri,
        "prediction_log_url": log_url,
        "model_poll_interval_seconds": 0.3,
        "model_retry_max_seconds": 0.5,
        "prediction_log_flush_seconds": 10,
    }
    values.update(overrides)
    return ApiSettings(_env_file=None, **values)  # type: ignore[call-arg]


class ApiServer:
    """The app under a real uvicorn server in a thread."""

    def __init__(self, settings: ApiSettings, app: FastAPI | None = None) -> None:
        self.app = app or create_app(settings)  # ``app``: one built by the test (e.g. with a source_factory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # As __main__ configures it: one socket write per response (inference_api.coalesce), no proxy headers.
        config = server_config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


HANG_GUARD_SECONDS = 300.0


def body_without_id(response: httpx.Response) -> Any:
    """An answer's body: its JSON without ``request_id`` (random unless the client sent one), else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        body.pop("request_id", None)
    return body


def wait_until(condition: Any, timeout: float = HANG_GUARD_SECONDS, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true.

    ``timeout`` is a hang guard, never shorter than ``HANG_GUARD_SECONDS``: a test's verdict may not depend on
    the machine's speed. A probe that times out or cannot connect (``httpx.TransportError``) counts as "not
    yet", since a busy machine can be slow to answer even a health check.
    """
    timeout = max(timeout, HANG_GUARD_SECONDS)
    deadline = time.monotonic() + timeout
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _holds(condition: Any) -> bool:
    try:
        return bool(condition())
    except httpx.TransportError:
        return False


@pytest.fixture
def unreachable_mysql_url() -> str:
    """A MySQL URL where nothing listens (a database that is down)."""
    return f"mysql://root@127.0.0.1:{free_port()}/nowhere"


@pytest.fixture
def mysql_log_url() -> Iterator[str]:
    """A scratch database on the shared MariaDB, dropped afterwards."""
    admin = os.environ.get("TEST_MYSQL_URL")
    if not admin:
        _unavailable(
            "no MariaDB/MySQL configured: set a URL whose user may create databases, e.g. TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/"
        )
    name = f"inference_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(normalize_url(admin or ""))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        _unavailable(f"MariaDB at {admin} is not usable: {exc}")
    yield make_url(normalize_url(admin or "")).set(database=name).render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "mysql"])
def either_log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A prediction-log URL: an SQLite file (embedded) and, in a second run, a scratch MariaDB database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    return str(request.getfixturevalue("mysql_log_url"))


class PrivateMariaDB:
    """A MariaDB server of this test's own, which the test may stop and start."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/inference"

    def install(self) -> None:
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        if installer is None or not Path(server).exists():
            _unavailable("MariaDB server binaries (mariadb-install-db, mariadbd) are not installed")
        subprocess.run(
            [installer or "", "--no-defaults", f"--datadir={self.data}", "--user=root", "--skip-test-db",
             "--auth-root-authentication-method=normal"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.start()
        engine = create_engine(self.url.rsplit("/", 1)[0] + "/")
        with engine.begin() as conn:
            conn.execute(text("CREATE DATABASE inference"))
        engine.dispose()

    def start(self) -> None:
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.folder / 'mysqld.sock'}", f"--pid-file={self.folder / 'mysqld.pid'}", "--user=root",
             "--skip-grant-tables", "--innodb-buffer-pool-size=16M", "--skip-log-bin"],
            stdout=subprocess.DEVNULL, stderr=(self.folder / "mysqld.log").open("ab"),
        )  # fmt: skip
        wait_until(self.accepts_connections, 60, f"private MariaDB on port {self.port}")

    def accepts_connections(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    db = PrivateMariaDB(tmp_path / "mariadb")
    db.folder.mkdir()
    db.install()
    yield db
    db.stop()
