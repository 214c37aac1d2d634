"""Model swaps under load, a registry that starts late, a log database that goes away, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from apisupport import ApiServer, PrivateMariaDB, Registry, free_port, settings_for, wait_until
from mlflow import MlflowClient

from inference_api.prediction_log import count_rows
from readmission import schema
from readmission.registry import MODEL_NAME

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
pytestmark = pytest.mark.slow


class Stream:
    """Clients sending /predict continuously from threads; every answer is recorded."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/predict", json=EXAMPLE)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    if response.status_code == 200:
                        self.versions[response.json()["model"]["version"]] += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")

    @property
    def served(self) -> int:
        with self.lock:
            return sum(self.versions.values())

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(300)


def test_alias_change_is_picked_up_without_restart_and_without_failed_requests(
    registry: Registry, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, what="version 1 to load")
        try:
            with Stream(api.url) as stream:
                wait_until(lambda: stream.versions["1"] >= 20, what="requests answered by version 1")
                client.set_registered_model_alias(MODEL_NAME, "champion", "2")
                wait_until(lambda: stream.versions["2"] >= 20, what="requests answered by version 2")
        finally:
            client.set_registered_model_alias(MODEL_NAME, "champion", "1")
        assert stream.failures == []
        assert httpx.get(f"{api.url}/model").json()["version"] == "2"
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "inference_model_loads_total 2.0" in metrics


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, what="version 1 to load")
        manager = api.app.state.manager
        source = manager._source
        original = source.load

        def broken(ref: object) -> object:
            raise OSError("artifact store unreachable")

        source.load = broken
        client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
        try:
            with Stream(api.url, clients=2) as stream:
                client.set_registered_model_alias(MODEL_NAME, "champion", "2")
                wait_until(lambda: manager.last_error is not None, what="the failed load")
                wait_until(lambda: stream.served >= 20, what="requests during the failure")
                # Version 1 still answers, but no longer as `champion`: the registry gives that name to version 2.
                answer = httpx.post(f"{api.url}/predict", json=EXAMPLE, timeout=60).json()["model"]
                assert answer["version"] == "1" and answer["alias"] is None
                assert answer["registry_status"] == "alias_moved" and "version 2" in answer["registry_message"]
                assert "inference_model_alias_current 0.0" in httpx.get(f"{api.url}/metrics", timeout=60).text
                assert "version 2 failed to load: OSError: artifact store unreachable" in manager.last_error
        finally:
            client.set_registered_model_alias(MODEL_NAME, "champion", "1")
            source.load = original
        wait_until(lambda: httpx.get(f"{api.url}/model", timeout=60).json()["alias"] == "champion", what="restored")
        assert stream.failures == [] and set(stream.versions) == {"1"}
        assert manager.last_error is None  # the alias names the served version again
        metrics = httpx.get(f"{api.url}/metrics").text
        assert 'inference_model_load_failures_total{reason="OSError"}' in metrics


def test_registry_down_at_start_up_then_ready_when_it_comes_back(registry: Registry, tmp_path: Path) -> None:
    port = free_port()
    settings = settings_for(f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path / 'log.db'}")
    with ApiServer(settings) as api:
        wait_until(lambda: "cannot resolve" in httpx.get(f"{api.url}/health/ready").text, what="a failed check")
        ready = httpx.get(f"{api.url}/health/ready")
        assert ready.status_code == 503 and "cannot resolve the registry alias" in ready.json()["reason"]
        assert httpx.get(f"{api.url}/health/live").status_code == 200
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", registry.uri, "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "mlflow.log").open("wb"),
        )  # fmt: skip
        try:
            wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 180, "ready after MLflow")
            assert httpx.post(f"{api.url}/predict", json=EXAMPLE).json()["model"]["version"] == "1"
        finally:
            server.terminate()
            server.wait(30)


def test_log_database_down_during_a_stream_loses_nothing(registry: Registry, private_mariadb: PrivateMariaDB) -> None:
    settings = settings_for(registry.uri, private_mariadb.url, prediction_log_batch_size=50)
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, what="the model")
        with Stream(api.url) as stream:
            wait_until(lambda: stream.served >= 50, what="requests before the outage")
            private_mariadb.stop()
            during = stream.served
            log = api.app.state.prediction_log
            # The outage lasts until the writer has met it (on a loaded machine 100 requests can pass first).
            wait_until(
                lambda: stream.served >= during + 100 and log.status().write_errors > 0,
                60,
                "requests and a failed write during the outage",
            )
            private_mariadb.start()
            wait_until(lambda: stream.served >= during + 200, what="requests after the outage")
        served = stream.served
        assert stream.failures == []
        wait_until(lambda: api.app.state.prediction_log.status().written == served, 60, "the log to catch up")
        status = api.app.state.prediction_log.status()
        assert status.write_errors > 0 and status.dropped == 0
    assert count_rows(private_mariadb.url) == served


def test_sigterm_writes_what_is_still_queued(
    registry: Registry, private_mariadb: PrivateMariaDB, tmp_path: Path
) -> None:
    count_rows_before = 0
    private_mariadb.stop()  # the log database is down: every prediction stays queued in the process
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.uri,
        "PREDICTION_LOG_URL": private_mariadb.url,
        "PREDICTION_LOG_FLUSH_SECONDS": "60",
        "DEVELOPMENT_MODE": "true",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_api"], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "api.log").open("wb"),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 120, "the API process to be ready")
        served = 0
        with httpx.Client(base_url=url) as client:
            for _ in range(40):
                assert client.post("/predict", json=EXAMPLE).status_code == 200
                served += 1
            assert client.post("/predict/batch", json={"encounters": [EXAMPLE] * 10}).status_code == 200
            served += 10
        process.send_signal(signal.SIGTERM)
        private_mariadb.start()  # comes back while the process is flushing
        # uvicorn finishes its graceful shutdown (our lifespan flushes the log), then raises SIGTERM again;
        # the service exits through Python with the status the signal's default action gives.
        assert process.wait(90) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert count_rows(private_mariadb.url) == count_rows_before + served
    # atexit ran: multiprocessing released the shared semaphores (no resource-tracker warning).
    assert "leaked semaphore" not in (tmp_path / "api.log").read_text()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=30).status_code == 200
    except httpx.HTTPError:
        return False
