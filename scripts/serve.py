"""Serve the champion and the page together (the end of `make run`): the inference API and the Streamlit UI.

    python scripts/serve.py          (API_PORT, default 8000; UI_PORT, default 8501)

Prints both URLs once each answers, stops both on Ctrl-C / SIGTERM, and stops the other (exit code 1)
when one of them dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers (503 while no model is loaded yet is an answer)
    except OSError:
        return False


def main() -> int:
    api_port, ui_port = os.environ.get("API_PORT", "8000"), os.environ.get("UI_PORT", "8501")
    bindir = Path(sys.executable).parent
    api = subprocess.Popen([sys.executable, "-m", "inference_api"], env={**os.environ, "PORT": api_port})
    ui_env = {**os.environ, "API_URL": os.environ.get("API_URL", f"http://127.0.0.1:{api_port}")}
    ui = subprocess.Popen(
        [
            str(bindir / "streamlit"),
            "run",
            str(ROOT / "streamlit" / "app.py"),
            "--server.headless=true",
            f"--server.port={ui_port}",
            "--server.address=127.0.0.1",
            "--browser.gatherUsageStats=false",
            "--client.toolbarMode=viewer",
        ],
        env=ui_env,
    )
    processes = {"inference API": api, "UI": ui}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    urls = {"inference API": f"http://127.0.0.1:{api_port}", "UI": f"http://127.0.0.1:{ui_port}"}
    checks = {"inference API": urls["inference API"] + "/health/live", "UI": urls["UI"] + "/_stcore/health"}
    announced: set[str] = set()
    code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"serve: the {name} exited with code {process.returncode}; stopping", file=sys.stderr)
                stopping, code = True, 1
            elif name not in announced and _answers(checks[name]):
                announced.add(name)
                extra = " (API docs: /docs)" if name == "inference API" else ""
                print(f"serve: {name} on {urls[name]}{extra}", flush=True)
                if len(announced) == 2:
                    print(f"serve: open {urls['UI']} in a browser; Ctrl-C stops both", flush=True)
        time.sleep(0.3)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
