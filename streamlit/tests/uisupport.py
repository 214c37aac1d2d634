"""Fixtures of the page's tests (conftest.py registers them): the real inference API serving a champion
the project's training job registered (also behind a proxy that records what the page sends), an API that runs
without any champion, and a port nobody serves."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from livesupport import free_port, multinomial_champion, start_api, train_champion

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
def unexplained_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API serving a champion it cannot explain (a multinomial logistic regression, as trained
    before #21): it predicts, and answers explain=true with 409 not_explainable."""
    folder = tmp_path_factory.mktemp("unexplained")
    yield from start_api(folder, multinomial_champion(folder))


@pytest.fixture(scope="session")
def not_ready_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API over an empty registry: it runs, but has no champion to serve."""
    folder = tmp_path_factory.mktemp("empty-registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    prepare_tracking(uri, (folder / "artifacts").as_uri())
    for url in start_api(folder, uri, want=503):
        _wait_for_the_first_registry_read(url)
        yield url


def _wait_for_the_first_registry_read(url: str) -> None:
    """Until its first registry read the API says "starting" (the page then says so, not "no champion")."""
    deadline = time.monotonic() + 300  # a hang guard, not a speed limit
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health/ready", timeout=30)
            return
        except urllib.error.HTTPError as answer:
            if not json.loads(answer.read()).get("reason", "").startswith("starting"):
                return
        time.sleep(0.2)
    raise AssertionError(f"the API at {url} never read the registry")


@dataclass
class RecordingApi:
    """The real API behind a proxy: ``url`` to point the page at, and the JSON body of every POST it sent."""

    url: str
    posted: list[tuple[str, Any]] = field(default_factory=list)  # (path, body) in the order sent


def _forwarding_handler(upstream: str, posted: list[tuple[str, Any]]) -> type[BaseHTTPRequestHandler]:
    """A handler passing each request to ``upstream`` unchanged and its answer back, keeping POST bodies."""

    class Forward(BaseHTTPRequestHandler):
        def _forward(self, body: bytes | None) -> None:
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            request = urllib.request.Request(upstream + self.path, body, headers, method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=300) as answer:
                    status, content, kind = answer.status, answer.read(), answer.headers.get("Content-Type")
            except urllib.error.HTTPError as exc:
                status, content, kind = exc.code, exc.read(), exc.headers.get("Content-Type")
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_GET(self) -> None:
            self._forward(None)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posted.append((self.path, json.loads(body)))
            self._forward(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows failures, not every request."""

    return Forward


@pytest.fixture
def recording_api(api_url: str) -> Iterator[RecordingApi]:
    """The real API serving champion v1, reached through a proxy that records every body the page POSTs."""
    recording = RecordingApi("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _forwarding_handler(api_url, recording.posted))
    recording.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recording
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def eligible(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every death or hospice discharge (which the page refuses) made a discharge home."""
    ended = frame["discharge_disposition_id"].isin([str(c) for c in schema.DEATH_OR_HOSPICE_DISCHARGE_IDS])
    return frame.assign(discharge_disposition_id=frame["discharge_disposition_id"].where(~ended, "1"))
