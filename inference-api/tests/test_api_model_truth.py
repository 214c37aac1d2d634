"""The API tells the truth about its model: when the registry stops naming the served version `champion`
(alias deleted, or the version itself deleted), the service keeps answering with it but no longer labels
its answers `champion`; when the alias comes back, the label does too. Real `mlflow server`, real uvicorn.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apisupport import ApiServer, Registry, free_port, settings_for, wait_until
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from inference_api.app import create_app
from inference_api.model_manager import AliasNotFoundError, ModelSource, VersionRef
from readmission import schema
from readmission.names import CHAMPION, MODEL_NAME

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))


@pytest.fixture
def mlflow_server(registry: Registry, tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a copy of the test registry's database (the test may delete from it)."""
    shutil.copy(registry.folder / "mlflow.db", tmp_path / "mlflow.db")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = (tmp_path / "mlflow.log").open("wb")
    # No job consumers (MLflow's GenAI jobs outlive a stopped server); a session of its own, stopped whole below.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 900, "mlflow server")  # a hang guard: a loaded machine takes minutes
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
            log.close()


def _reload(api: ApiServer) -> str:
    outcome = httpx.post(f"{api.url}/model/reload", timeout=60).json()["outcome"]
    return str(outcome)


def _labels(api: ApiServer) -> dict[str, object]:
    """The served model as /model, /health/ready, /predict and /metrics each describe it."""
    info = httpx.get(f"{api.url}/model", timeout=30).json()
    ready = httpx.get(f"{api.url}/health/ready", timeout=30)
    predicted = httpx.post(f"{api.url}/predict", json=EXAMPLE, timeout=30)
    metrics = httpx.get(f"{api.url}/metrics", timeout=30).text
    gauge = [line for line in metrics.splitlines() if line.startswith("inference_model_alias_current ")]
    return {
        "info": (info["version"], info["alias"], info.get("registry_status")),
        "ready": (ready.status_code, ready.json()["model"]["alias"], ready.json()["model"].get("registry_status")),
        "predict": (predicted.status_code, predicted.json()["model"]["alias"], predicted.json()["model"].get("registry_status")),
        "gauge": gauge,
    }  # fmt: skip


def test_deleted_alias_is_reported_and_its_return_restores_the_label(mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    settings = settings_for(mlflow_server, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        client.delete_registered_model_alias(MODEL_NAME, CHAMPION)
        assert _reload(api) == "alias_missing"
        labels = _labels(api)
        assert labels["info"] == ("1", None, "alias_missing")
        assert labels["ready"] == (200, None, "alias_missing")  # still serving the last good model
        assert labels["predict"] == (200, None, "alias_missing")
        assert labels["gauge"] == ["inference_model_alias_current 0.0"]
        message = httpx.get(f"{api.url}/model").json()["registry_message"]
        assert "`champion`" in message and "version 1" in message

        client.set_registered_model_alias(MODEL_NAME, CHAMPION, "1")
        assert _reload(api) == "restored"
        labels = _labels(api)
        assert labels["info"] == ("1", "champion", "ok")
        assert labels["predict"] == (200, "champion", None)
        assert labels["gauge"] == ["inference_model_alias_current 1.0"]


def test_deleted_version_is_reported_and_a_new_champion_is_swapped_in(mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    settings = settings_for(mlflow_server, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        client.delete_model_version(MODEL_NAME, "1")
        assert _reload(api) == "version_deleted"
        labels = _labels(api)
        assert labels["info"] == ("1", None, "version_deleted")
        assert labels["predict"] == (200, None, "version_deleted")
        assert labels["gauge"] == ["inference_model_alias_current 0.0"]
        checks = httpx.get(f"{api.url}/metrics").text
        assert 'inference_model_registry_checks_total{outcome="version_deleted"} 1.0' in checks

        client.set_registered_model_alias(MODEL_NAME, CHAMPION, "2")
        assert _reload(api) == "swapped"
        labels = _labels(api)
        assert labels["info"] == ("2", "champion", "ok")
        assert labels["predict"] == (200, "champion", None)


def test_a_registry_outage_keeps_the_last_known_status(registry: Registry, tmp_path: Path) -> None:
    """A registry that does not answer is not an answer: the served model keeps its `champion` label."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        source = api.app.state.manager._source
        source._client = MlflowClient(tracking_uri=dead, registry_uri=dead)
        assert _reload(api) == "registry_error"
        labels = _labels(api)
        assert labels["info"] == ("1", "champion", "ok")
        assert labels["gauge"] == ["inference_model_alias_current 1.0"]


class GatedLoadSource(ModelSource):
    """Loads as usual, but holds version 2's load until the test lets it go."""

    release = threading.Event()

    def load(self, ref: VersionRef) -> tuple[Any, dict[str, float]]:
        if ref.version == "2":
            assert self.release.wait(600), "the test never released the load"
        return super().load(ref)


def test_answers_lose_the_alias_while_the_new_champion_loads(registry: Registry, tmp_path: Path) -> None:
    """Before: the old version's answers said `champion` for the whole load of the version the alias names."""
    shutil.copy(registry.folder / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = settings_for(uri, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    app = create_app(settings, lambda: GatedLoadSource(uri, settings.model_name, settings.model_alias))
    GatedLoadSource.release.clear()
    with ApiServer(settings, app=app) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(MODEL_NAME, CHAMPION, "2")
        reload = threading.Thread(target=_reload, args=(api,))
        reload.start()
        try:
            wait_until(lambda: _labels(api)["info"] == ("1", None, "alias_moved"), 60, "the label to drop")
            labels = _labels(api)
            assert labels["predict"] == (200, None, "alias_moved")
            assert "is being loaded" in httpx.get(f"{api.url}/model").json()["registry_message"]
        finally:
            GatedLoadSource.release.set()
            reload.join(120)
        assert _labels(api)["info"] == ("2", "champion", "ok")


class FlakyLookupSource(ModelSource):
    """The alias is gone, and the registry then fails the version lookup (a 503 in between)."""

    def resolve(self) -> VersionRef:
        if getattr(self, "alias_gone", False):
            raise AliasNotFoundError("Registered model alias champion not found.")
        return super().resolve()

    def version_exists(self, version: str) -> bool:
        raise MlflowException("API request failed with error code 503", error_code="TEMPORARILY_UNAVAILABLE")


@contextlib.contextmanager
def _serving_with(source: type[ModelSource], registry: Registry, tmp_path: Path) -> Iterator[ApiServer]:
    """The API on ``registry`` through ``source``, checked only on demand, once its model is loaded."""
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    app = create_app(settings, lambda: source(registry.uri, settings.model_name, settings.model_alias))
    with ApiServer(settings, app=app) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        yield api


def test_a_registry_error_after_the_alias_is_gone_still_drops_the_label(registry: Registry, tmp_path: Path) -> None:
    """Before: the failed lookup kept `champion` on answers until a later poll, though the alias was gone."""
    with _serving_with(FlakyLookupSource, registry, tmp_path) as api:
        api.app.state.manager._source.alias_gone = True
        assert _reload(api) == "alias_missing"
        labels = _labels(api)
        assert labels["info"] == ("1", None, "alias_missing")
        assert labels["predict"] == (200, None, "alias_missing")
        assert "could not be checked" in httpx.get(f"{api.url}/model").json()["registry_message"]


class GatedFirstLoadSource(ModelSource):
    """Holds the first load until the test lets it go."""

    release = threading.Event()

    def load(self, ref: VersionRef) -> tuple[Any, dict[str, float]]:
        assert self.release.wait(600), "the test never released the load"
        return super().load(ref)


def test_while_the_first_champion_loads_the_service_says_loading(registry: Registry, tmp_path: Path) -> None:
    """Before: /model answered "no model is loaded: the model has not been loaded yet" (and, on a registry
    hiccup, "Train and promote one") while the champion `make run` had just trained was loading."""
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    app = create_app(settings, lambda: GatedFirstLoadSource(registry.uri, settings.model_name, settings.model_alias))
    GatedFirstLoadSource.release.clear()
    with ApiServer(settings, app=app) as api:
        try:
            wait_until(lambda: "loading" in httpx.get(f"{api.url}/health/ready").text, 120, "the load to start")
            ready = httpx.get(f"{api.url}/health/ready").json()
            assert ready["reason"] == f"loading version 1 of {MODEL_NAME} (`champion`)"
            answer = httpx.get(f"{api.url}/model")
            assert answer.status_code == 503
            assert answer.json()["message"].startswith(f"no model is loaded yet: loading version 1 of {MODEL_NAME}")
            assert "Train and promote" not in answer.json()["message"]
        finally:
            GatedFirstLoadSource.release.set()
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")


class ForbiddenSource(ModelSource):
    """MLflow refuses the service's user the model (403): deleted or renamed since the grant, or revoked."""

    lookups = 0

    def resolve(self) -> VersionRef:
        if getattr(self, "forbidden", False):
            raise AliasNotFoundError("MLflow user inference may not read model 'm' (403): ...", forbidden=True)
        return super().resolve()

    def version_exists(self, version: str) -> bool:
        ForbiddenSource.lookups += 1
        return super().version_exists(version)


def test_a_403_on_the_model_drops_the_label_without_counting_an_outage(registry: Registry, tmp_path: Path) -> None:
    """The 403 is an answer (the service cannot vouch for the alias), not a registry error on every poll."""
    with _serving_with(ForbiddenSource, registry, tmp_path) as api:
        api.app.state.manager._source.forbidden = True
        assert _reload(api) == "alias_missing" and _reload(api) == "alias_missing"
        assert _labels(api)["info"] == ("1", None, "alias_missing")
        assert "(403)" in httpx.get(f"{api.url}/model").json()["registry_message"]
        assert ForbiddenSource.lookups == 0  # the version is not asked about: the same 403 would answer
        assert api.app.state.manager.last_error and "cannot resolve" not in api.app.state.manager.last_error
