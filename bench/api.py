"""The inference API against its baselines and ceilings, side by side in one run on the same champion.

Servers (each one process, one worker, started and stopped here in turn):
  ours            python -m inference_api, micro-batching on, every prediction logged to MariaDB
  ours-nobatch    the same with MICROBATCH_ENABLED=false
  mlflow-serve    mlflow models serve -w 1 --env-manager local on the same model version
  naive           the original's style: engine per request, pandas + pyfunc, to_sql per prediction (MariaDB)
  constant        a FastAPI endpoint that answers a constant: the HTTP layer's ceiling
and in-process predict_proba on 1 and on 1,000 rows (the model's ceiling), through the sklearn pipeline and
through the service's fast path.

Load comes from wrk (apt-get install wrk) at 1, 8 and 64 connections, single encounters and batches:

    make run   # once: trains and promotes a champion in var/ (Ctrl-C after it starts serving)
    python bench/api.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from readmission import schema
from readmission.db import normalize_url
from readmission.registry import CHAMPION, MODEL_NAME

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the process helpers the tests use (dev tooling, as this is)
from livesupport import free_port, serve  # noqa: E402

CLIENTS = (1, 8, 64)
BATCH_ROWS = 100
OURS_PATHS = {"single": "/predict", "batch": "/predict/batch"}
# With explanations (issue #21): the same bodies, each answer with its top 10 contributions (TreeSHAP).
EXPLAIN_PATHS = {**OURS_PATHS, "explain": "/predict?explain=true", "explain-batch": "/predict/batch?explain=true"}


@dataclass
class Cell:
    """One wrk run against one server."""

    server: str
    mode: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rows_per_request: int

    @property
    def rows_per_second(self) -> float:
        return self.rps * self.rows_per_request


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(url: str, body_file: Path, clients: int, seconds: float) -> tuple[float, float, float, int]:
    """Requests/s, p50 ms, p99 ms, failed requests (socket errors + non-2xx) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "5s", "--latency", "-s", str(HERE / "post.lua"), url],
        env={**os.environ, "BODY_FILE": str(body_file)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    if p50 is None or p99 is None:
        raise RuntimeError(f"could not read wrk's latency distribution:\n{out}")
    return rps, _ms(*p50.groups()), _ms(*p99.groups()), errors


class Server:
    """A server process on a free port; ``ready_path`` answers 200 once it can serve."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], ready_path: str, cwd: Path) -> None:
        self.name = name
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.command = [part.replace("{port}", str(port)) for part in command]
        self.env = {**os.environ, **env, "PORT": str(port)}
        self.ready_path = ready_path
        self.cwd = cwd
        self.log_path = Path(tempfile.gettempdir()) / f"bench-api-{name}.log"
        self._running: Iterator[None] | None = None

    def __enter__(self) -> Server:
        self._running = serve(
            self.command, self.env, self.url + self.ready_path, self.log_path, cwd=self.cwd, timeout=180,
            process_group=True,
        )  # fmt: skip
        next(self._running)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._running is not None:
            next(self._running, None)


def measure(
    server: Server, paths: dict[str, str], bodies: dict[str, Path], seconds: float, modes: tuple[str, ...]
) -> list[Cell]:
    cells = []
    for mode in modes:
        body = bodies[f"{server.name}:{mode}"] if f"{server.name}:{mode}" in bodies else bodies[mode]
        rows = BATCH_ROWS if mode.endswith("batch") else 1
        path = paths[mode]
        # Warm up: first requests pay imports, caches and JIT-like lazy paths in every server.
        for _ in range(20):
            response = httpx.post(server.url + path, content=body.read_bytes(), timeout=30,
                                  headers={"content-type": "application/json"})  # fmt: skip
            if response.status_code != 200:
                raise RuntimeError(f"{server.name} {mode} answered {response.status_code}: {response.text[:500]}")
        for clients in CLIENTS:
            rps, p50, p99, errors = run_wrk(server.url + path, body, clients, seconds)
            cells.append(Cell(server.name, mode, clients, rps, p50, p99, errors, rows))
            print(f"  {server.name:13} {mode:6} {clients:3} clients: {rps:8.1f} req/s  p50 {p50:7.1f} ms  "
                  f"p99 {p99:7.1f} ms  failed {errors}", flush=True)  # fmt: skip
    return cells


def in_process(model_uri: str, tracking_uri: str, encounters: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Median milliseconds of predict_proba on 1 and 1,000 rows: pipeline vs the service's fast path."""
    import mlflow

    from readmission.serving import Predictor, rows_to_frame

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.sklearn.load_model(model_uri)
    predictor = Predictor(model)
    results = []
    for rows in (1, 1000):
        batch = (encounters * (rows // len(encounters) + 1))[:rows]
        frame = rows_to_frame(batch)
        for label, call in (
            ("sklearn pipeline predict_proba (DataFrame in)", lambda f=frame: model.predict_proba(f)),
            (f"service fast path ({predictor.path}, dicts in)", lambda b=batch: predictor.predict_proba(b)),
        ):
            call()
            times = []
            for _ in range(30 if rows == 1 else 10):
                started = time.perf_counter()
                call()
                times.append((time.perf_counter() - started) * 1000)
            results.append((f"{label}, {rows:,} row(s)", statistics.median(times)))
    return results


def real_encounters(clean_url: str, n: int) -> list[dict[str, Any]]:
    """``n`` real encounters of the CLEAN test split (what `make run` built), as API request bodies."""
    import math

    from readmission.clean import read_clean
    from readmission.db import create_db_engine
    from readmission.modeling import model_input

    engine = create_db_engine(clean_url)
    try:
        frame = model_input(read_clean(engine, "test")).sample(n, random_state=0)
    except Exception as exc:
        sys.exit(f"cannot read the CLEAN test split at {clean_url} ({exc}); run `make run` first")
    finally:
        engine.dispose()
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]
    return [schema.EncounterFeatures.model_validate(r).model_dump(exclude={schema.ENCOUNTER_ID}) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///var/mlflow/mlflow.db")
    )
    parser.add_argument("--mysql-url", default=os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/"))
    parser.add_argument("--clean-url", default="sqlite:///var/clean.db", help="CLEAN database: real batch bodies")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    parser.add_argument("--only", nargs="*", default=None, help="run only these servers")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="headline: rounds of 'ours' and the constant endpoint measured alternately at 64 clients",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (or brew install wrk)")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    try:
        version = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except Exception as exc:
        sys.exit(f"no '{CHAMPION}' of {MODEL_NAME} in {args.tracking_uri} ({exc}); run `make run` first")
    model_uri = f"models:/{MODEL_NAME}/{version.version}"
    print(f"champion: {MODEL_NAME} v{version.version} ({args.tracking_uri}); {args.seconds:g} s per cell")

    admin = normalize_url(args.mysql_url)
    database = f"bench_api_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    log_url = make_url(admin).set(database=database).render_as_string(hide_password=False)

    encounters = real_encounters(args.clean_url, BATCH_ROWS)
    single = [list(schema.EXAMPLE_ENCOUNTERS.values())[1]]
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    bodies = {
        "single": work / "single.json",
        "batch": work / "batch.json",
        "mlflow-serve:single": work / "mlflow-single.json",
        "mlflow-serve:batch": work / "mlflow-batch.json",
        "naive:single": work / "naive-single.json",
    }
    bodies["explain"], bodies["explain-batch"] = bodies["single"], bodies["batch"]
    bodies["single"].write_text(json.dumps(single[0]))
    bodies["batch"].write_text(json.dumps({"encounters": encounters}))
    bodies["mlflow-serve:single"].write_text(json.dumps({"dataframe_records": single}))
    bodies["mlflow-serve:batch"].write_text(json.dumps({"dataframe_records": encounters}))
    bodies["naive:single"].write_text(json.dumps(single[0]))

    python = sys.executable
    mlflow_bin = str(Path(python).with_name("mlflow"))
    # mlflow models serve starts `uvicorn` by name: the environment's bin folder must be on PATH.
    path = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    common = {"MLFLOW_TRACKING_URI": args.tracking_uri, "LOG_LEVEL": "warning", "PATH": path}
    ours_env = {
        **common,
        "PREDICTION_LOG_URL": log_url,
        "MODEL_POLL_INTERVAL_SECONDS": "3600",
        "DEVELOPMENT_MODE": "true",
    }
    servers = [
        (Server("ours", [python, "-m", "inference_api"], ours_env, "/health/ready", ROOT), EXPLAIN_PATHS,
         ("single", "batch", "explain", "explain-batch")),
        (Server("ours-nobatch", [python, "-m", "inference_api"], {**ours_env, "MICROBATCH_ENABLED": "false"},
                "/health/ready", ROOT), OURS_PATHS, ("single", "batch")),
        (Server("mlflow-serve", [mlflow_bin, "models", "serve", "-m", model_uri, "-w", "1", "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", "{port}"], common, "/ping", ROOT), {"single": "/invocations", "batch": "/invocations"},
         ("single", "batch")),
        (Server("naive", [python, "-m", "uvicorn", "naive_api:app", "--app-dir", str(HERE / "servers"), "--port", "{port}",
                          "--log-level", "warning"],
                {**common, "MODEL_URI": model_uri, "LOG_URL": log_url}, "/docs", ROOT), {"single": "/predict"},
         ("single",)),
        (Server("constant", [python, "-m", "uvicorn", "constant_api:app", "--port", "{port}", "--log-level", "warning"],
                {}, "/docs", HERE / "servers"), {"single": "/predict"}, ("single",)),
    ]  # fmt: skip
    cells: list[Cell] = []
    rounds: list[tuple[Cell, Cell]] = []
    logged = None
    try:
        for server, path, modes in servers:
            if args.only and server.name not in args.only:
                continue
            print(f"== {server.name}", flush=True)
            with server:
                cells += measure(server, path, bodies, args.seconds, modes)
            if server.name == "ours":
                logged = _count(log_url, "prediction_log")
        if args.rounds and (not args.only or {"ours", "constant"} <= set(args.only)):
            print(f"== headline: ours and constant, alternately, {args.rounds} rounds at 64 clients", flush=True)
            ours_server, constant_server = (next(s for s, _, _ in servers if s.name == n) for n in ("ours", "constant"))
            rounds = headline(ours_server, constant_server, bodies["single"], args.seconds, args.rounds)
        print("== in-process predict_proba", flush=True)
        model_ceiling = in_process(model_uri, args.tracking_uri, encounters)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        engine.dispose()
        shutil.rmtree(work, ignore_errors=True)

    report(cells, model_ceiling, logged, rounds)


def headline(ours: Server, constant: Server, body: Path, seconds: float, count: int) -> list[tuple[Cell, Cell]]:
    """Both servers up; wrk at 64 connections on one, then the other, ``count`` times (noise hits both alike)."""
    pairs = []
    with ours, constant:
        for _ in range(20):  # warm-up, as in ``measure``
            for server in (ours, constant):
                httpx.post(server.url + "/predict", content=body.read_bytes(), timeout=30,
                           headers={"content-type": "application/json"})  # fmt: skip
        for number in range(1, count + 1):
            pair = []
            for server in (ours, constant):
                rps, p50, p99, errors = run_wrk(server.url + "/predict", body, 64, seconds)
                pair.append(Cell(server.name, "single", 64, rps, p50, p99, errors, 1))
            print(f"  round {number}: ours {pair[0].rps:8.1f} req/s (p99 {pair[0].p99_ms:5.1f} ms, failed "
                  f"{pair[0].errors})  constant {pair[1].rps:8.1f} req/s  ratio {pair[0].rps / pair[1].rps:.2f}",
                  flush=True)  # fmt: skip
            pairs.append((pair[0], pair[1]))
    return pairs


def _count(url: str, table: str) -> int:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def report(
    cells: list[Cell], model_ceiling: list[tuple[str, float]], logged: int | None, rounds: list[tuple[Cell, Cell]]
) -> None:
    print()
    print(
        f"{'server':13} {'mode':13} {'clients':>7} {'req/s':>9} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"
    )
    for c in cells:
        print(f"{c.server:13} {c.mode:13} {c.clients:7d} {c.rps:9.1f} {c.rows_per_second:9.0f} {c.p50_ms:8.1f} "
              f"{c.p99_ms:8.1f} {c.errors:7d}")  # fmt: skip
    print()
    for label, ms in model_ceiling:
        print(f"in-process {label}: {ms:.2f} ms")
    if logged is not None:
        print(f"prediction-log rows written by 'ours' (MariaDB): {logged:,}")

    def at64(server: str) -> Cell | None:
        return next((c for c in cells if c.server == server and c.mode == "single" and c.clients == 64), None)

    ours, mlflow_serve, constant, naive, nobatch = (at64(s) for s in ("ours", "mlflow-serve", "constant", "naive",
                                                                    "ours-nobatch"))  # fmt: skip
    if ours is None:
        return
    print("\nat 64 clients, single-row requests, logging on, one worker:")
    if mlflow_serve and mlflow_serve.rps:
        print(f"  ours / mlflow models serve throughput: {ours.rps / mlflow_serve.rps:6.1f}x   (target >= 20x)")
    if naive:
        ratio = f"{ours.rps / naive.rps:6.1f}x" if naive.rps else "  (the baseline completed no request)"
        print(f"  ours / naive baseline throughput:      {ratio}")
    if constant and constant.rps:
        print(f"  ours / constant endpoint throughput:   {ours.rps / constant.rps:6.2f}    (target >= 0.40; "
              "one pair of runs minutes apart)")  # fmt: skip
    if rounds:
        ratios = [o.rps / c.rps for o, c in rounds]
        print(f"  ours / constant, alternating rounds:   {statistics.median(ratios):6.2f}    (median of "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.40)")  # fmt: skip
        print(
            f"  ours p99 over those rounds: median {statistics.median(o.p99_ms for o, _ in rounds):.1f} ms, "
            f"max {max(o.p99_ms for o, _ in rounds):.1f} ms; failed {sum(o.errors for o, _ in rounds)}"
        )
    if nobatch and nobatch.rps:
        print(f"  micro-batching on / off throughput:    {ours.rps / nobatch.rps:6.2f}x  "
              f"(p99 {ours.p99_ms:.1f} vs {nobatch.p99_ms:.1f} ms)")  # fmt: skip
    print(f"  ours p99: {ours.p99_ms:.1f} ms   (target < 100 ms)")
    explained(cells)


def explained(cells: list[Cell]) -> None:
    """The cost of explanations: 'ours' with explain=true against the same requests without, same run."""
    pairs = [("single", "explain"), ("batch", "explain-batch")]
    lines = []
    for plain_mode, explain_mode in pairs:
        for clients in CLIENTS:
            plain, explain = (
                next((c for c in cells if c.server == "ours" and c.mode == m and c.clients == clients), None)
                for m in (plain_mode, explain_mode)
            )
            if plain and explain and plain.rps:
                lines.append(
                    f"  {plain_mode:6} {clients:3} clients: {explain.rps:8.1f} vs {plain.rps:8.1f} req/s "
                    f"({explain.rps / plain.rps:5.2f}x); p99 {explain.p99_ms:6.1f} vs {plain.p99_ms:6.1f} ms"
                )
    if lines:
        print("\nwith explain=true (top 10 contributions per row) against without, 'ours':")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
