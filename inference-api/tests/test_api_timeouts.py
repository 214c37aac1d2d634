"""A model call that hangs, and a micro-batcher that dies, do not hang the service: a request whose model
call exceeds PREDICT_TIMEOUT_SECONDS is answered 504; a dead batcher fails what waits on it and takes the
service out of readiness with the reason (real registry, real uvicorn)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from apisupport import ApiServer, Registry, settings_for, wait_until

from inference_api.app import create_app
from inference_api.model_manager import ModelSource
from readmission import schema
from readmission.serving import Predictor

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))


class HangingPredictor(Predictor):
    """Predicts normally until ``hang`` is set; then each call blocks until ``release`` is set."""

    hang = threading.Event()
    release = threading.Event()

    def predict_proba(self, rows: Sequence[Any]) -> np.ndarray:
        if self.hang.is_set():
            self.release.wait()
        return super().predict_proba(rows)


class HangingSource(ModelSource):
    def predictor(self, model: Any) -> Predictor:
        return HangingPredictor(model)


@contextmanager
def _hanging_api(registry: Registry, tmp_path: Path, timeout: float) -> Iterator[ApiServer]:
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", predict_timeout_seconds=timeout)
    app = create_app(settings, lambda: HangingSource(registry.uri, settings.model_name, settings.model_alias))
    HangingPredictor.hang.clear()
    HangingPredictor.release.clear()
    try:
        with ApiServer(settings, app=app) as api:
            wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
            yield api
    finally:
        HangingPredictor.release.set()


@pytest.fixture
def hanging_api(registry: Registry, tmp_path: Path) -> Iterator[ApiServer]:
    with _hanging_api(registry, tmp_path, timeout=0.5) as api:
        yield api


@pytest.mark.parametrize(("path", "body"), [("/predict", EXAMPLE), ("/predict/batch", {"encounters": [EXAMPLE]})])
def test_a_hanging_model_call_is_answered_504(hanging_api: ApiServer, path: str, body: Any) -> None:
    HangingPredictor.hang.set()
    response = httpx.post(f"{hanging_api.url}{path}", json=body, headers={"X-Request-ID": "slow-1"}, timeout=60)
    assert response.status_code == 504
    answer = response.json()
    assert answer["error"] == "prediction_timeout" and answer["request_id"] == "slow-1"
    assert "PREDICT_TIMEOUT_SECONDS" in answer["message"]
    # While the call is stuck the pod is not ready (traffic goes to other replicas); released, it recovers.
    wait_until(lambda: httpx.get(f"{hanging_api.url}/health/ready").status_code == 503, 30, "not ready")
    assert "PREDICT_TIMEOUT_SECONDS" in httpx.get(f"{hanging_api.url}/health/ready").json()["reason"]
    HangingPredictor.hang.clear()
    HangingPredictor.release.set()
    wait_until(lambda: httpx.get(f"{hanging_api.url}/health/ready").status_code == 200, 60, "readiness back")
    # The 0.5 s deadline was the subject above; a real prediction on a busy machine may need longer.
    hanging_api.app.state.batcher._timeout = 300.0
    assert httpx.post(f"{hanging_api.url}{path}", json=body, timeout=300).status_code == 200


def test_requests_queued_behind_a_stuck_call_are_answered_504_too(hanging_api: ApiServer) -> None:
    """The watchdog times requests from their arrival: one in the stuck model call and those queued behind
    it all get 504 (none waits for the call to return)."""
    HangingPredictor.hang.set()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda i: httpx.post(f"{hanging_api.url}/predict", json=EXAMPLE, timeout=120), range(4))
        )
    assert [a.status_code for a in answers] == [504] * 4
    assert all("the wait for the model thread included" in a.json()["message"] for a in answers)
    HangingPredictor.release.set()


def test_a_dead_batcher_fails_its_requests_and_makes_the_service_not_ready(registry: Registry, tmp_path: Path) -> None:
    with _hanging_api(registry, tmp_path, timeout=120) as api:
        batcher = api.app.state.batcher
        loop: asyncio.AbstractEventLoop = batcher._task.get_loop()
        HangingPredictor.hang.set()  # a request is in the batcher's model call when the batcher dies
        results: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: results.append(httpx.post(f"{api.url}/predict", json=EXAMPLE, timeout=60))
        )
        waiting.start()
        wait_until(lambda: batcher.busy_seconds() is not None, 30, "the model call to start")
        loop.call_soon_threadsafe(batcher._task.cancel)
        waiting.join(60)
        assert results and results[0].status_code == 503 and results[0].json()["error"] == "batcher_failed"
        ready = httpx.get(f"{api.url}/health/ready", timeout=30)
        assert ready.status_code == 503 and "micro-batcher stopped" in ready.json()["reason"]
        HangingPredictor.release.set()
        after = httpx.post(f"{api.url}/predict", json=EXAMPLE, timeout=30)
        assert after.status_code == 503 and after.json()["error"] == "batcher_failed"
        assert "inference_batcher_failures_total 1.0" in httpx.get(f"{api.url}/metrics").text
        live = httpx.get(f"{api.url}/health/live", timeout=30)  # the liveness probe asks for a restart
        assert live.status_code == 503 and "micro-batcher stopped" in live.json()["reason"]
