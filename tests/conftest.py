"""Shared fixtures: the real data file, scratch PostgreSQL databases, SQLite files, synthetic sources.

Servers and the data file come from the environment (``.ci/run`` sets all of them):
- ``TEST_POSTGRES_URL``: a PostgreSQL URL whose user may create and drop databases;
- ``TEST_DATA_PATH``: the UCI diabetic_data.csv (default: ../shared/data/diabetic_data.csv, else the copy
  `readmission fetch` or `make run` downloaded to var/uci/, if present).
Without them the dependent tests skip with the reason, unless ``REQUIRE_TEST_SERVICES=1``, where a
missing service fails the test instead (CI must never pass by skipping).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from imagestack import build_images
from mlflowstack import Stack, start_stack
from sqlalchemy import create_engine, text

from readmission import schema
from readmission.clean import SplitSpec, clean_frame
from readmission.db import normalize_url
from readmission.synthetic import write_synthetic_csv
from testsupport import PostgresDatabases, _unavailable, read_env_file

REPO = Path(__file__).resolve().parents[1]
_DATA_CANDIDATES = (REPO.parent / "shared" / "data" / "diabetic_data.csv", REPO / "var" / "uci" / "diabetic_data.csv")
POSTGRES_EXAMPLE = "TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    """The full UCI file."""
    given = os.environ.get("TEST_DATA_PATH")
    path = Path(given) if given else next((p for p in _DATA_CANDIDATES if p.is_file()), _DATA_CANDIDATES[0])
    if not path.is_file():
        _unavailable(
            f"the UCI file is not at {path}: set TEST_DATA_PATH=/path/to/diabetic_data.csv, or run "
            "`.venv/bin/readmission fetch` once (it downloads the file to var/uci/)"
        )
    return path


@pytest.fixture(scope="session")
def real_clean(real_data_path: Path) -> pd.DataFrame:
    """The full UCI file cleaned in memory (same rules as the CLEAN store), split column included."""
    raw = pd.read_csv(real_data_path, dtype=str, keep_default_na=False)
    raw = raw.astype({c.name: "int64" for c in schema.COLUMNS if c.is_integer}).assign(batch_number=0)
    return clean_frame(raw, SplitSpec(seed=42))


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a PostgreSQL database from which scratch databases are created."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        _unavailable(f"no PostgreSQL configured: set a URL whose user may create databases, e.g. {POSTGRES_EXAMPLE}")
    assert url is not None
    try:
        engine = create_engine(normalize_url(url))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        _unavailable(f"PostgreSQL at {url} is not reachable: {exc}")
    return normalize_url(url)


@pytest.fixture
def postgres(postgres_admin_url: str) -> Iterator[PostgresDatabases]:
    """Factory of scratch PostgreSQL databases, dropped after the test."""
    databases = PostgresDatabases(postgres_admin_url)
    yield databases
    databases.drop_all()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, object]]:
    """(backend name, callable returning a fresh database URL) for SQLite and for PostgreSQL."""
    if request.param == "sqlite":
        counter = iter(range(1000))
        yield "sqlite", lambda: f"sqlite:///{tmp_path / f'db{next(counter)}.db'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    yield "postgres", databases.create


@pytest.fixture
def synthetic_csv(tmp_path: Path) -> Path:
    """A valid 2,500-row source file in the UCI layout."""
    return write_synthetic_csv(tmp_path / "synthetic.csv", rows=2_500, seed=7)


@pytest.fixture(scope="session")
def mysql_admin_url() -> str:
    """URL of a MariaDB/MySQL server whose user may create databases (TEST_MYSQL_URL)."""
    url = os.environ.get("TEST_MYSQL_URL")
    if not url:
        _unavailable(
            "no MySQL/MariaDB configured: set a URL whose user may create databases, e.g. "
            "TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/"
        )
    assert url is not None
    return normalize_url(url).rstrip("/")


@pytest.fixture(scope="session")
def mlflow_stack(
    mysql_admin_url: str, postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The MLflow server of the manifests (basic-auth app, users Job run): MariaDB tracking store, a
    PostgreSQL user store, moto for MinIO (tests/support/mlflowstack.py)."""
    name = f"readmission_mlflow_{uuid.uuid4().hex[:8]}"
    admin = create_engine(mysql_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        _unavailable(f"MySQL at {mysql_admin_url} is not usable: {exc}")
    users = PostgresDatabases(postgres_admin_url)
    config = read_env_file(REPO / "mlflow" / "config.env")
    # Only what any process needs: every MLflow setting must come from the manifests, as in the pod.
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    try:
        stack = start_stack(
            f"{mysql_admin_url}/{name}", users.create("mlflow_auth"), tmp_path_factory.mktemp("mlflow"), config, base
        )
        yield stack
        stack.stop()
    finally:
        users.drop_all()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """The mlflow, inference-api, streamlit and locust images, built once per session (tests/support/imagestack.py);
    their kustomizations' references by service."""
    return build_images()
