"""Serve the champion and the page together (the end of `make run`): the inference API and the Streamlit UI.

    python scripts/serve.py          (API_PORT, default 8000; UI_PORT, default 8501)

Checks first that both ports are free (exit code 1 at once, naming the port and the setting, when another
program holds one), prints each URL only once its own child answers there (the API's /health/live must
report the instance id given to it; the page cannot bind a taken port and exits, which stops both), stops
both on Ctrl-C / SIGTERM, and stops the other (exit code 1) when one of them dies.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _answers(url: str, instance: str | None = None) -> bool:
    """Whether ``url`` answers; with ``instance``, only a JSON body whose ``instance`` is that id counts."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()  # an error status is an answer (503 while the batcher is down)
    except OSError:
        return False
    if instance is None:
        return True
    try:
        return bool(json.loads(body).get("instance") == instance)
    except (ValueError, AttributeError):
        return False


def _port_in_use(host: str, port: int) -> bool:
    """Whether another program listens on ``host:port`` (a bind there fails)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn and Streamlit bind: a port left in TIME_WAIT by our own last run is free to them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _bad_ports(ports: dict[str, str]) -> list[str]:
    """A message per port setting that is not a port number, or that repeats another's."""
    bad = [
        f"serve: {setting}={value!r} is not a port number (1-65535)"
        for setting, value in ports.items()
        if not (value.isdigit() and 1 <= int(value) <= 65535)
    ]
    if not bad and len(set(map(int, ports.values()))) < len(ports):
        bad.append(f"serve: {' and '.join(ports)} are both {next(iter(ports.values()))}; give each its own port")
    return bad


def _ports_taken(ports: dict[str, tuple[str, int]]) -> list[str]:
    """A message per setting whose port another program holds."""
    return [
        f"serve: port {port} is in use by another program (set {setting}=... to use another port)"
        for setting, (host, port) in ports.items()
        if _port_in_use(host, port)
    ]


def _start_ui(api_port: str, ui_port: str, bindir: Path) -> subprocess.Popen[bytes]:
    """The Streamlit page on 127.0.0.1:``ui_port``, talking to the API (API_URL, default the local one)."""
    ui_env = {**os.environ, "API_URL": os.environ.get("API_URL", f"http://127.0.0.1:{api_port}")}
    return subprocess.Popen(
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


def main() -> int:
    api_port, ui_port = os.environ.get("API_PORT", "8000"), os.environ.get("UI_PORT", "8501")
    api_host = os.environ.get("HOST", "127.0.0.1")
    problems = _bad_ports({"API_PORT": api_port, "UI_PORT": ui_port})
    if not problems:
        problems = _ports_taken({"API_PORT": (api_host, int(api_port)), "UI_PORT": ("127.0.0.1", int(ui_port))})
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    bindir = Path(sys.executable).parent
    instance = secrets.token_hex(8)
    api_env = {**os.environ, "PORT": api_port, "INSTANCE_ID": instance}
    api = subprocess.Popen([sys.executable, "-m", "inference_api"], env=api_env)
    ui = _start_ui(api_port, ui_port, bindir)
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
            elif name not in announced and _answers(checks[name], instance if name == "inference API" else None):
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
