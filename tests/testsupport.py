"""Helpers the test modules of tests/ import (a module name of its own: several test folders run in one
pytest session, and each has a conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
