"""Serve the champion and the page together (the end of `make run`): the inference API and the Streamlit UI.

    python scripts/serve.py          (API_PORT, default 8000; UI_PORT, default 8501)

Checks first that both ports are free (exit code 1 at once, naming the port and the setting, when another
program holds one), prints each URL only once its own child answers there and is usable: the API's once its
/health/live reports the instance id given to it and /health/ready says the model is loaded (while a known
champion loads it says "loading"; with no champion yet it gives the URL and the reason), the page's after
that. The page cannot bind a taken port and exits, which stops both. Stops both on Ctrl-C / SIGTERM, and the
other (exit code 1) when one of them dies.
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


def _get_json(url: str) -> dict[str, object] | None:
    """The JSON body ``url`` answers with, whatever its status (503 bodies carry the reason); None when
    nothing answers or the body is not a JSON object."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()  # an error status is an answer (503 while not ready)
    except OSError:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _answers(url: str, instance: str | None = None) -> bool:
    """Whether ``url`` answers; with ``instance``, only a JSON body whose ``instance`` is that id counts."""
    if instance is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
    body = _get_json(url)
    return body is not None and body.get("instance") == instance


def api_state(base: str, instance: str) -> tuple[str, str]:
    """Where our own API child is: ("down", ""), ("loading", reason), ("ready", "model vN"), or
    ("not_ready", reason) for anything else (no champion yet, a registry error)."""
    if not _answers(base + "/health/live", instance):
        return "down", ""
    ready = _get_json(base + "/health/ready")
    if ready is None:  # no answer in 2 s (a model being unpickled keeps the process busy): keep waiting
        return "loading", "busy"
    if ready.get("status") == "ready":
        model = ready.get("model")
        if not isinstance(model, dict):
            model = {}
        return "ready", f"{model.get('name', 'the model')} v{model.get('version', '?')}"
    reason = str(ready.get("reason") or "no reason given")
    return ("loading" if reason.startswith(("loading", "starting")) else "not_ready"), reason


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
            "--logger.level=warning",  # its "Uvicorn server started on ..." line: serve announces the page itself
        ],
        env=ui_env,
        stdout=subprocess.DEVNULL,  # Streamlit's own "You can now view..." banner: serve says it when both are ready
    )


class Announcer:
    """Prints what serve is waiting for, and each URL once it is usable: the API's when its model is loaded
    (or when it says why it cannot have one, e.g. no champion yet), the page's after that."""

    def __init__(self, urls: dict[str, str], instance: str) -> None:
        self.urls, self.instance = urls, instance
        self.said: set[str] = set()
        self.started = time.monotonic()

    def _say(self, key: str, line: str) -> None:
        if key not in self.said:
            self.said.add(key)
            print(line, flush=True)

    def step(self) -> None:
        """One look at both children; prints only what is new."""
        api, ui = self.urls["inference API"], self.urls["UI"]
        if "api" not in self.said:
            state, detail = api_state(api, self.instance)
            if state == "loading" and detail.startswith("loading"):
                self._say("loading", f"serve: the inference API is up and {detail}; the URLs follow once it is loaded")
            elif state == "ready":
                waited = time.monotonic() - self.started
                self._say("api", f"serve: inference API on {api} (API docs: /docs), serving {detail} ({waited:.0f} s)")
            elif state == "not_ready":
                self._say("api", f"serve: inference API on {api} (API docs: /docs), not ready: {detail}")
        if "api" in self.said and "ui" not in self.said and _answers(ui + "/_stcore/health"):
            self._say("ui", f"serve: UI on {ui}")
            print(f"serve: open {ui} in a browser; Ctrl-C stops both", flush=True)


def _api_environment(api_port: str, instance: str) -> dict[str, str]:
    """The API child's environment: this one's, on ``api_port``, identified by ``instance``.

    uvicorn's and the service's INFO lines (among them "Uvicorn running on <URL>" before the model is loaded)
    stay out of the way: serve says what matters; LOG_LEVEL=info brings them back. DEVELOPMENT_MODE: `make run`
    is the laptop path (the API listens on 127.0.0.1 unless HOST says otherwise); POST /model/reload is then
    open without a token, and a RELOAD_TOKEN set in the environment or .env still closes it. Nothing here calls
    it: the API follows the alias by itself.
    """
    return {"LOG_LEVEL": "warning", "DEVELOPMENT_MODE": "true", **os.environ, "PORT": api_port, "INSTANCE_ID": instance}


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
    api = subprocess.Popen([sys.executable, "-m", "inference_api"], env=_api_environment(api_port, instance))
    ui = _start_ui(api_port, ui_port, bindir)
    processes = {"inference API": api, "UI": ui}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    urls = {"inference API": f"http://127.0.0.1:{api_port}", "UI": f"http://127.0.0.1:{ui_port}"}
    announcer = Announcer(urls, instance)
    code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"serve: the {name} exited with code {process.returncode}; stopping", file=sys.stderr)
                stopping, code = True, 1
        if not stopping:
            announcer.step()
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
