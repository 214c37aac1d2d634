"""The liveness probe while pathological bodies arrive, beside the same probe on an idle service, in one run:

    make run   # once: a champion in var/ (Ctrl-C after it starts serving)
    python bench/pathological.py --seconds 20

Starts the API (one process, the champion from var/, the prediction log in a scratch SQLite file), probes
GET /health/live every 50 ms while idle, then again while a client thread sends, back to back, the bodies
issue #17 found harmful (1,001 / 10,000 / 200,000 empty encounters, 1,000 invalid ones, deep nesting, a
2 MB string, 40,000 unknown keys). Prints each body's status, answer size and time, and the probe's
p50 / p99 / max in both phases with their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from livesupport import free_port, serve  # noqa: E402

BODIES = {
    "1,001 empty encounters": b'{"encounters": [' + b",".join([b"{}"] * 1_001) + b"]}",
    "10,000 empty encounters": b'{"encounters": [' + b",".join([b"{}"] * 10_000) + b"]}",
    "200,000 empty encounters": b'{"encounters": [' + b",".join([b"{}"] * 200_000) + b"]}",
    "1,000 empty encounters (at the limit)": b'{"encounters": [' + b",".join([b"{}"] * 1_000) + b"]}",
    "nesting 3,000 deep": b'{"encounters": ' + b"[" * 3_000 + b"]" * 3_000 + b"}",
    "a 2 MB string": b'{"encounters": [{"race": "' + b"x" * 2_000_000 + b'"}]}',
    "40,000 unknown keys": ("{" + ",".join(f'"k{i}": {i}' for i in range(40_000)) + "}").encode(),
}


def _probe(url: str, seconds: float) -> list[float]:
    """Latencies (ms) of GET /health/live every 50 ms for ``seconds``."""
    latencies = []
    with httpx.Client(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            client.get(f"{url}/health/live").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return latencies


def _attack(url: str, stop: threading.Event, seen: dict[str, tuple[int, int, float]]) -> None:
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            for name, body in BODIES.items():
                path = "/predict" if "unknown keys" in name else "/predict/batch"
                started = time.perf_counter()
                answer = client.post(url + path, content=body, headers={"Content-Type": "application/json"})
                seen[name] = (answer.status_code, len(answer.content), (time.perf_counter() - started) * 1000)


def _summary(latencies: list[float]) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///var/mlflow/mlflow.db")
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pathological-"))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "MLFLOW_TRACKING_URI": args.tracking_uri, "LOG_LEVEL": "warning", "DEVELOPMENT_MODE": "true",
           "PREDICTION_LOG_URL": f"sqlite:///{work / 'log.db'}", "MODEL_POLL_INTERVAL_SECONDS": "3600"}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    running = contextlib.contextmanager(serve)  # serve() is a generator: one yield while the server runs
    with running([sys.executable, "-m", "inference_api"], env, f"{url}/health/ready", work / "api.log", cwd=ROOT):
        idle = _probe(url, args.seconds / 2)
        stop = threading.Event()
        seen: dict[str, tuple[int, int, float]] = {}
        attacker = threading.Thread(target=_attack, args=(url, stop, seen))
        attacker.start()
        loaded = _probe(url, args.seconds)
        stop.set()
        attacker.join()
    for name, (status, size, ms) in seen.items():
        print(f"  {name:40s} {status}  answer {size:>7,} B  in {ms:8.1f} ms  (body {len(BODIES[name]):>9,} B)")
    (i50, i99, imax), (l50, l99, lmax) = _summary(idle), _summary(loaded)
    print(f"/health/live idle:          p50 {i50:6.1f} ms  p99 {i99:6.1f} ms  max {imax:6.1f} ms  ({len(idle)} probes)")
    print(
        f"/health/live under attack:  p50 {l50:6.1f} ms  p99 {l99:6.1f} ms  max {lmax:6.1f} ms  ({len(loaded)} probes)"
    )
    print(f"ratio under attack / idle:  p50 {l50 / i50:5.1f}x  p99 {l99 / i99:5.1f}x  max {lmax / imax:5.1f}x")


if __name__ == "__main__":
    main()
