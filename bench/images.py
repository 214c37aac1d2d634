"""Image sizes and container start times, side by side (after `make images`).

    .venv/bin/python bench/images.py [--rounds 3]

For each service image: its size, the base image's share of it, and the seconds from `podman run` (or
`docker run`) to the first answer of its own health endpoint, median of ``--rounds`` starts, with the
manifest's read-only root and user. The API answers /health/live without a registry; its time to ready with a
champion (model download and fast-path compile included) is measured by tests/test_images.py on a real MLflow
pod and written to test-output/images/predict.json, printed here when present. MLflow starts on a SQLite store
in the container's /tmp.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("images", ROOT / "scripts" / "images.py")
assert spec and spec.loader
images = importlib.util.module_from_spec(spec)
sys.modules["images"] = images
spec.loader.exec_module(images)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_seconds(program: str, reference: str, service: str) -> float:
    """Seconds from `run` to the first 200 of the service's health endpoint (container removed after)."""
    port = _free_port()
    commands = {
        "inference-api": ([], {"PORT": str(port), "HOST": "127.0.0.1", "DEVELOPMENT_MODE": "true"}, "/health/live"),
        "streamlit": ([f"--server.port={port}", "--server.address=127.0.0.1"], {}, "/_stcore/health"),
        "mlflow": (
            ["server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", "sqlite:////tmp/m.db"],
            {},
            "/health",
        ),
    }
    args, env, path = commands[service]
    flags = ["--network", "host", "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--user", "10001:10001"]
    if Path(program).name == "podman":
        flags += ["--read-only-tmpfs=false", "--no-healthcheck"]
    flags += [f"--env={k}={v}" for k, v in env.items()]
    name = f"bench-{service}-{port}"
    started = time.monotonic()
    subprocess.run(
        [program, "run", "--detach", "--name", name, *flags, reference, *args], check=True, capture_output=True
    )
    try:
        while time.monotonic() - started < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{service} did not answer {path} within 300 s")
    finally:
        subprocess.run([program, "rm", "--force", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    program = images.engine(images.builder())
    base = images.size_bytes(images.BASE, program) / 1e6
    stand_in = " (scripts/stand-in-base.sh's stand-in)" if images.stand_in_base(program) else ""
    print(f"base {images.BASE}: {base:.0f} MB{stand_in}")
    print(f"{'image':<14} {'size MB':>8} {'above base':>11} {'start to health, median s':>27}")
    for service in images.SERVICES:
        image = images.image_of(service)
        size = images.size_bytes(image.reference, program) / 1e6
        start = "-"
        if service != "locust":  # no server of its own to answer (a load generator)
            runs = [_start_seconds(program, image.reference, service) for _ in range(rounds)]
            start = f"{statistics.median(runs):.1f} ({', '.join(f'{r:.1f}' for r in runs)})"
        print(f"{service:<14} {size:>8.0f} {size - base:>11.0f} {start:>27}")
    measured = ROOT / "test-output" / "images" / "predict.json"
    if measured.exists():
        ready = json.loads(measured.read_text())["api_ready_seconds"]
        print(f"inference-api start to ready with a champion (tests/test_images.py, last run): {ready} s")


if __name__ == "__main__":
    main()
