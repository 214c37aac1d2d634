"""Live services for tests of the clients of the API (the page, the load test), importable from every test
folder (pytest's `pythonpath` puts tests/support on sys.path): a champion trained by the project's own
training job on synthetic encounters, and the real API process (`python -m inference_api`) serving it."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig, prepare_tracking


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 30) -> int:
    """The HTTP status ``url`` answers with; 0 when nothing answers (within ``timeout``: generous, since a busy
    machine can take seconds to answer even a health check)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def serve(
    command: list[str],
    env: dict[str, str],
    health: str,
    log_path: Path,
    want: int = 200,
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    process_group: bool = False,
) -> Iterator[None]:
    """Run ``command`` until ``health`` answers ``want``; yield while it runs, then stop it (SIGTERM).

    ``timeout`` is a hang guard, not a speed limit: a process that exits is reported at once, and a loaded
    machine can take minutes to import and start a server.

    ``process_group`` runs it in a session of its own and signals the whole group, for servers that start
    workers of their own (`mlflow models serve`)."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or log_path.parent,
        start_new_session=process_group,
    )  # fmt: skip

    def stop(sig: signal.Signals, wait: float | None) -> None:
        """Send ``sig`` (to the whole group with ``process_group``) and reap the process."""
        if process.poll() is None:
            if process_group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        process.wait(timeout=wait)

    try:
        deadline = time.monotonic() + timeout
        while http_status(health) != want:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(signal.SIGKILL, None)
                raise RuntimeError(f"{command[:3]} did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        try:
            yield
        finally:
            try:
                stop(signal.SIGTERM, 120)
            except subprocess.TimeoutExpired:
                stop(signal.SIGKILL, None)
    finally:
        log.close()


@dataclass(frozen=True)
class Champion:
    """A local MLflow store whose `champion` is v1, and the CLEAN database it was trained on."""

    tracking_uri: str
    clean_url: str


def train_champion(folder: Path, rows: int = 4_000) -> Champion:
    clean = build_synthetic_clean(folder, rows=rows, seed=8, split_seed=2)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = (folder / "artifacts").as_uri()
    prepare_tracking(uri, artifacts)
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=60, max_trials=1, importance_rows=200)
    job = train_job(str(clean.url), uri, config, artifact_location=artifacts, log=lambda _line: None)
    assert job["promotion"]["version"] == "1" and job["promotion"]["promoted"]
    return Champion(uri, f"sqlite:///{folder / 'clean.db'}")


def multinomial_champion(folder: Path, rows: int = 3_000) -> str:
    """A local registry (its tracking URI) whose champion is a multinomial logistic regression, as that family
    was trained before it became a chain (#21): it predicts, but cannot be explained exactly."""
    import mlflow
    import pandas as pd

    from readmission.modeling import logistic_regression, model_input
    from readmission.store_status import CLEAN_TABLE
    from readmission.training import _log_model

    engine = build_synthetic_clean(folder, rows=rows, seed=3, split_seed=1)
    clean = pd.read_sql_table(CLEAN_TABLE, engine)
    engine.dispose()
    model = logistic_regression()
    model.steps[-1] = ("model", model.steps[-1][1].early)
    model.fit(model_input(clean), clean["readmitted"].astype(str))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    prepare_tracking(uri, (folder / "artifacts").as_uri())
    with mlflow.start_run():
        logged = _log_model(model, "model")
    version = mlflow.register_model(logged.model_uri, "diabetes-readmission")
    mlflow.MlflowClient().set_registered_model_alias("diabetes-readmission", "champion", version.version)
    return uri


def start_api(folder: Path, tracking_uri: str, want: int = 200, **settings: str) -> Iterator[str]:
    """`python -m inference_api` on a free port until /health/ready answers ``want``; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DATA_DIR": str(folder),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREDICTION_LOG_URL": f"sqlite:///{folder / 'predictions.db'}",
        "MODEL_RETRY_MAX_SECONDS": "1",
        # A hang guard, not the API's 10 s: on a busy machine a model call can take longer, and the clients'
        # tests (and the alerts on their traffic) are not about the API's timeout.
        "PREDICT_TIMEOUT_SECONDS": "300",
        "LOG_LEVEL": "warning",
        "DEVELOPMENT_MODE": "true",  # no reload token: these tests never call POST /model/reload
        **settings,
    }
    url = f"http://127.0.0.1:{port}"
    for _ in serve([sys.executable, "-m", "inference_api"], env, f"{url}/health/ready", folder / "api.log", want):
        yield url


@contextlib.contextmanager
def json_stand_in(answer: Callable[[str], tuple[int, dict[str, Any]]]) -> Iterator[str]:
    """A local HTTP server answering every GET with ``answer(path)`` as JSON (a stand-in for the API where a
    test needs one exact answer, such as a 503 with a given reason); yields its URL, stops on exit."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer(self.path)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
