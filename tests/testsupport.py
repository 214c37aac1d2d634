"""Helpers the test modules of tests/ import (a module name of its own: several test folders run in one
pytest session, and each has a conftest.py)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from readmission.db import create_db_engine


def _unavailable(reason: str) -> None:
    """Skip for want of a service, or fail when CI requires every service (REQUIRE_TEST_SERVICES=1)."""
    if os.environ.get("REQUIRE_TEST_SERVICES") == "1":
        pytest.fail(f"{reason} (REQUIRE_TEST_SERVICES=1, so this is a failure, not a skip)")
    pytest.skip(reason)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs of an env file as kustomize and Docker Compose read it (comments and blanks skipped)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value
    return pairs


class PostgresDatabases:
    """Creates uniquely named databases and drops them at the end of the test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []
        self.engines: list[Engine] = []

    def create(self, prefix: str = "test") -> str:
        """URL of a new empty database."""
        name = f"readmission_{prefix}_{uuid.uuid4().hex[:10]}"
        self._admin(f"CREATE DATABASE {name}")
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def engine(self, url: str) -> Engine:
        """An engine on ``url`` that is disposed before the database is dropped."""
        engine = create_db_engine(url)
        self.engines.append(engine)
        return engine

    def _admin(self, sql: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(sql))
        engine.dispose()

    def drop_all(self) -> None:
        """Drop every database this helper created."""
        for engine in self.engines:
            engine.dispose()
        for name in self.created:
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def init_sql(script: Path, keep: str) -> list[str]:
    """The statements of a database init script's SQL block (mysql/ or postgres/init-databases.sh) that name
    ``keep``, one per line as written there."""
    found = re.search(r"<<'?SQL'?\n(.*?)\nSQL\n", script.read_text(), re.DOTALL)
    assert found, f"{script} has no <<SQL block"
    block = found.group(1)
    return [line.strip() for line in block.splitlines() if keep in line and not line.lstrip().startswith("--")]
