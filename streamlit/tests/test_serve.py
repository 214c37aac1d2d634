"""The end of `make run` (scripts/serve.py): the API and the page both come up, their URLs are printed, and
SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from livesupport import free_port, json_stand_in

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
        # Announced once the champion is loaded (was: 23 s before, while /model still said "Train and promote one").
        assert (
            f"serve: inference API on http://127.0.0.1:{api_port} (API docs: /docs), serving diabetes-readmission v"
            in printed
        )
        assert printed.index("serve: inference API on") < printed.index(f"serve: UI on http://127.0.0.1:{ui_port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/model", timeout=60) as response:
            assert response.status == 200
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


@pytest.mark.parametrize("setting", ["API_PORT", "UI_PORT"])
def test_a_port_held_by_another_program_stops_serve_at_once_naming_it(setting: str, tmp_path: Path) -> None:
    """Before: with 8501 held by another program, `make run` printed that program's URL as its own page."""
    ports = {"API_PORT": free_port(), "UI_PORT": free_port()}
    with socket.socket() as other:  # another program listening on the port
        other.bind(("127.0.0.1", ports[setting]))
        other.listen()
        env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "DATA_DIR": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, str(SERVE)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=PATIENCE_SECONDS,
        )
    assert done.returncode == 1
    assert f"serve: port {ports[setting]} is in use by another program (set {setting}=... " in done.stderr
    assert "serve:" not in done.stdout  # no URL announced


def test_the_api_health_names_its_instance_so_serve_knows_its_own_child() -> None:
    """A stranger's server on the API port answers /health/live without our instance id: not announced."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", SERVE)
    assert spec is not None and spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    port = free_port()
    stranger = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=SERVE.parent
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not serve._answers(url):
            assert time.monotonic() < deadline and stranger.poll() is None
            time.sleep(0.2)
        assert not serve._answers(url, "0123456789abcdef")
    finally:
        stranger.terminate()
        stranger.wait(30)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({"API_PORT": "abc", "UI_PORT": "8501"}, "serve: API_PORT='abc' is not a port number (1-65535)"),
        ({"API_PORT": "8000", "UI_PORT": "70000"}, "serve: UI_PORT='70000' is not a port number (1-65535)"),
        ({"API_PORT": "18777", "UI_PORT": "18777"}, "serve: API_PORT and UI_PORT are both 18777"),
    ],
)
def test_bad_port_settings_are_named_not_a_traceback(ports: dict[str, str], message: str, tmp_path: Path) -> None:
    env = {**os.environ, **ports, "DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(SERVE)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE_SECONDS
    )
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def _serve_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", SERVE)
    assert spec is not None and spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    return serve


def test_serve_says_loading_then_announces_the_api_once_the_model_is_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    serve = _serve_module()
    ready: list[tuple[int, dict[str, object]]] = []

    def answer(path: str) -> tuple[int, dict[str, object]]:
        return (200, {"instance": "me"}) if path == "/health/live" else ready[-1]

    with json_stand_in(answer) as url:
        announcer = serve.Announcer({"inference API": url, "UI": "http://127.0.0.1:1"}, "me")
        ready.append((503, {"status": "not_ready", "reason": "starting: the registry has not been read yet"}))
        announcer.step()  # was: announced at once as "not ready: the model has not been loaded yet"
        assert capsys.readouterr().out == ""
        ready.append((503, {"status": "not_ready", "reason": "loading version 3 of m"}))
        announcer.step()
        announcer.step()
        said = capsys.readouterr().out
        assert said == "serve: the inference API is up and loading version 3 of m; the URLs follow once it is loaded\n"
        ready.append((200, {"status": "ready", "model": {"name": "m", "version": "3"}}))
        announcer.step()
        assert f"serve: inference API on {url} (API docs: /docs), serving m v3" in capsys.readouterr().out
        ready.append((503, {"status": "not_ready", "reason": "the registry has no `champion` version of m"}))
        other = serve.Announcer({"inference API": url, "UI": "http://127.0.0.1:1"}, "me")
        other.step()
        assert "not ready: the registry has no `champion` version of m" in capsys.readouterr().out
        assert serve.api_state(url, "someone else") == ("down", "")
