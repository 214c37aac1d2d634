"""Fixtures of the page's tests (conftest.py registers them): the real inference API serving a champion
the project's training job registered, an API that runs without any champion, and a port nobody serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from livesupport import free_port, start_api, train_champion

from readmission import schema
from readmission.training import prepare_tracking

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture(scope="session")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local MLflow store whose champion is v1."""
    return train_champion(tmp_path_factory.mktemp("registry")).tracking_uri


@pytest.fixture(scope="session")
def api_url(registry_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API serving champion v1."""
    yield from start_api(tmp_path_factory.mktemp("api"), registry_uri)


@pytest.fixture(scope="session")
def not_ready_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API over an empty registry: it runs, but has no champion to serve."""
    folder = tmp_path_factory.mktemp("empty-registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    prepare_tracking(uri, (folder / "artifacts").as_uri())
    yield from start_api(folder, uri, want=503)


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def eligible(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every death or hospice discharge (which the page refuses) made a discharge home."""
    ended = frame["discharge_disposition_id"].isin([str(c) for c in schema.DEATH_OR_HOSPICE_DISCHARGE_IDS])
    return frame.assign(discharge_disposition_id=frame["discharge_disposition_id"].where(~ended, "1"))
