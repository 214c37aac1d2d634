"""Shutdown: every request the server accepted is answered (and logged), and the pod's grace period
covers the whole shutdown.

- The real service (`python -m inference_api`) against a real registry and a real MariaDB log: twelve
  clients each send a 1,000-encounter batch (or one encounter to /predict, which the protocol path holds),
  all but its last bytes; once the server has accepted all twelve (its own /metrics shows them in flight)
  SIGTERM is sent, then the last bytes. So all twelve are in flight at SIGTERM, still being received,
  however fast or slow the machine. Every client must get its answer (200, or 503 with
  ``Connection: close``), never a reset (every single encounter a 200), and the log must hold a row per
  encounter of each 200. A thirteenth client, which never sends its last bytes, gets the answer window's 503
  with ``Connection: close`` 20 s after SIGTERM.
- A request still unanswered when the answer window closes gets its 503 with ``Connection: close``
  (real uvicorn server, a handler that never finishes by itself).
- deployment.yaml: preStop pause + the shutdown budget (from the settings the pod gets) fit
  terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
import yaml
from apisupport import Registry, free_port, wait_until
from fastapi import FastAPI

from inference_api.__main__ import shutdown_budget
from inference_api.batcher import InFlight
from inference_api.metrics import Metrics
from inference_api.middleware import EdgeMiddleware
from inference_api.prediction_log import count_rows
from inference_api.settings import ApiSettings
from inference_api.shutdown import AnswerBeforeExit
from readmission import schema

HERE = Path(__file__).resolve().parents[1]

CLIENTS = 12
ENCOUNTERS = 1_000
_BODY = orjson.dumps({"encounters": [list(schema.EXAMPLE_ENCOUNTERS.values())[i % 3] for i in range(ENCOUNTERS)]})
_SINGLE = orjson.dumps(next(iter(schema.EXAMPLE_ENCOUNTERS.values())))
_REQUESTS = {"/predict/batch": (_BODY, ENCOUNTERS), "/predict": (_SINGLE, 1)}  # path: (body, encounters)
_HELD = 16  # bytes of each body sent only after SIGTERM


def _sample(metrics: str, name: str, labels: str = "") -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.search(pattern, metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _in_flight(url: str) -> int:
    try:
        return int(_sample(httpx.get(f"{url}/metrics", timeout=5).text, "inference_requests_in_flight") - 1)
    except httpx.HTTPError:
        return -1


def _rss_mib(pid: int) -> str:
    """Resident memory of the process and its children (MiB), for the report."""
    pids = [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    sizes = []
    for p in pids:
        line = next(x for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        sizes.append(int(line.split()[1]) // 1024)
    return " + ".join(f"{s} MiB" for s in sizes)


class Clients:
    """Threads that each send one request to ``path`` and record the answer or the error."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self.body, self.encounters = _REQUESTS[path]
        self.outcomes: list[tuple[int, str] | str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _body(self) -> Iterator[bytes]:
        yield self.body[:-_HELD]
        self.release.wait()
        yield self.body[-_HELD:]

    def _run(self) -> None:
        headers = {"content-type": "application/json", "content-length": str(len(self.body))}
        try:
            with httpx.Client(base_url=self.url, timeout=600) as client:
                response = client.post(self.path, content=self._body(), headers=headers)
            outcome: tuple[int, str] | str = (response.status_code, response.headers.get("connection", ""))
            if response.status_code == 200:
                answer = response.json()
                assert len(answer.get("predictions", [answer])) == self.encounters
        except Exception as exc:  # a reset or a truncated answer: recorded, the test fails on it
            outcome = repr(exc)
        with self.lock:
            self.outcomes.append(outcome)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(600)


def _straggle(port: int, path: str, body: bytes) -> socket.socket:
    """A connection that sends ``path``'s head and all but the last bytes of ``body``, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    head = f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body[:-_HELD])
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """What the server sends on ``sock`` until it closes the connection."""
    with sock:
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("path", list(_REQUESTS))
def test_sigterm_answers_and_logs_every_accepted_request(
    registry: Registry, mysql_log_url: str, tmp_path: Path, path: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.uri,
        "PREDICTION_LOG_URL": mysql_log_url,
        "DEVELOPMENT_MODE": "true",
        "PORT": str(port),
        "LOG_LEVEL": "info",
    }
    stderr = tmp_path / "api.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_api"], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=stderr.open("wb"),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 120, "the API process to be ready")
        # __main__'s server options: no header naming the server software (uvicorn sends `server: uvicorn`).
        assert "server" not in httpx.get(f"{url}/health/live", timeout=5).headers
        clients = Clients(url, path)
        clients.start()
        wait_until(lambda: _in_flight(url) == CLIENTS, 300, "the server to accept all twelve requests")
        straggler = _straggle(port, path, clients.body)
        wait_until(lambda: _in_flight(url) == CLIENTS + 1, 300, "the server to accept the straggler")
        print(f"resident memory before SIGTERM: {_rss_mib(process.pid)}")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: _in_flight(url) < 0, 60, "the server to stop accepting connections")
        clients.release.set()
        clients.join()
        straggler_answer = _read_all(straggler)
        status = process.wait(300)
    finally:
        if process.poll() is None:
            process.kill()
    outcomes = clients.outcomes
    log_text = stderr.read_text()
    assert len(outcomes) == CLIENTS
    answered = sum(1 for o in outcomes if isinstance(o, tuple) and o[0] == 200)
    refused = sum(1 for o in outcomes if o == (503, "close"))
    assert answered + refused == CLIENTS, (outcomes, log_text[-3000:])
    # The 20 s window serves at least the first 1,000-row batch on any machine, and every single encounter.
    assert answered >= (1 if clients.encounters > 1 else CLIENTS), outcomes
    # A client that never finishes its body gets the window's 503 (on /predict, the protocol path gives it back
    # to the app at SIGTERM, whose shutdown guard answers it).
    assert straggler_answer.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close\r\n" in straggler_answer
    assert status == 128 + signal.SIGTERM, log_text[-3000:]
    assert "POST /predict: protocol path on" in log_text  # __main__'s start-up line
    assert count_rows(mysql_log_url) == clients.encounters * answered, log_text[-3000:]


def test_the_grace_period_covers_the_pre_stop_pause_and_the_shutdown_budget() -> None:
    deployment = yaml.safe_load((HERE / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    # What the ConfigMap sets; the Secret adds RELOAD_TOKEN.
    settings = ApiSettings(_env_file=HERE / "config.env", reload_token="t" * 32)  # type: ignore[call-arg]
    budget = shutdown_budget(settings)
    assert budget.graceful_timeout > budget.answer  # the 503 answers go out before uvicorn gives up
    assert pre_stop + budget.total <= pod["terminationGracePeriodSeconds"], (pre_stop, budget)


def test_a_request_unanswered_when_the_window_closes_gets_503_with_connection_close() -> None:
    app = FastAPI()
    entered = asyncio.Event()

    @app.post("/slow")
    async def slow() -> dict[str, str]:
        entered.set()
        await asyncio.Event().wait()  # work that will not finish in the window
        return {"never": "answered"}

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        return {"status": "ok"}

    metrics = Metrics()
    app.add_middleware(EdgeMiddleware, metrics=metrics, max_body_bytes=10_000, in_flight=InFlight())
    wrapped = AnswerBeforeExit(app, answer_seconds=0.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(wrapped, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 60, "the server to start")
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(httpx.post(f"http://127.0.0.1:{port}/slow", json={"a": 1}, timeout=60)),
        daemon=True,
    )
    try:
        client.start()
        wait_until(entered.is_set, 60, "the request to be in the handler")
        assert httpx.get(f"http://127.0.0.1:{port}/fast").status_code == 200  # answered ones are untouched
        wrapped.begin()
        client.join(60)
    finally:
        server.should_exit = True
        thread.join(60)
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["connection"] == "close"
    assert answer.json()["error"] == "shutting_down"
    counted = {"endpoint": "other", "method": "POST"}  # /metrics says what the client got: 503, not 500
    assert metrics.registry.get_sample_value("inference_requests_total", {**counted, "status": "503"}) == 1
    assert metrics.registry.get_sample_value("inference_requests_total", {**counted, "status": "500"}) is None
