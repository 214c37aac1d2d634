"""The end of `make run` (scripts/serve.py): the API and the page both come up, their URLs are printed, and
SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from livesupport import free_port

SERVE = Path(__file__).resolve().parents[2] / "scripts" / "serve.py"
# Hang guards, not speed limits: a busy machine can take minutes to start both servers.
PATIENCE_SECONDS = 600


def test_serve_starts_the_api_and_the_page_then_stops_both(registry_uri: str, tmp_path: Path) -> None:
    api_port, ui_port = free_port(), free_port()
    env = {
        **os.environ,
        "API_PORT": str(api_port),
        "UI_PORT": str(ui_port),
        "MLFLOW_TRACKING_URI": registry_uri,
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "warning",
    }
    env.pop("API_URL", None)
    process = subprocess.Popen(
        [sys.executable, str(SERVE)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not any("in a browser" in line for line in lines):
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)[-3000:]
            lines.append(line)
        printed = "".join(lines)
        assert f"serve: inference API on http://127.0.0.1:{api_port} (API docs: /docs)" in printed
        assert f"serve: UI on http://127.0.0.1:{ui_port}" in printed
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/_stcore/health", timeout=60) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health/live", timeout=60) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for port in (api_port, ui_port):  # both children are gone
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except urllib.error.HTTPError as exc:  # an HTTP answer, even an error, means a server is still up
            raise AssertionError(f"something still answers on {port}") from exc
        except OSError:
            continue  # connection refused: stopped
        raise AssertionError(f"something still answers on {port}")
