"""The inference API against its baselines, ceilings and peers, side by side in one run on the same champion.

Servers (each one process, one worker, started and stopped here in turn):
  ours            python -m inference_api, micro-batching on, every prediction logged to MariaDB; when a peer
                  with batching runs, gathering for at most the peers' window, 10 ms (--ours-wait-ms; the
                  service's default is 2 ms)
  ours-nobatch    the same with MICROBATCH_ENABLED=false
  mlflow-serve    mlflow models serve -w 1 --env-manager local on the same model version
  naive           the style of the service this project replaced: engine per request, pandas + pyfunc, to_sql
                  per prediction (MariaDB)
  constant        a FastAPI endpoint that answers a constant: the HTTP layer's ceiling
  peers           serving frameworks (--peers; bench/peers/): LitServe, BentoML 1.4, MLServer 1.7 and KServe's
                  Python model server, each in a virtualenv of its own (made on the first run under
                  var/bench-peers/, reused while requirements/bench-peers.txt and our pins hold), each with
                  the stock path (mlflow.sklearn.load_model + predict_proba on a DataFrame) and with our
                  compiled predictor, with the framework's adaptive batching on and off where it has one (their
                  scikit-learn on one OpenMP thread: --peer-omp-threads); one model worker each, behind the
                  framework's own HTTP process where it has one (LitServe, MLServer; BentoML's supervisor)
and in-process predict_proba on 1 and on 1,000 rows (the model's ceiling), through the sklearn pipeline and
through the service's fast path.

Before any server is timed its answers to a single encounter and to a 100-encounter batch are compared, to
the last bit, with the probabilities ours computes; a server that answers others is not timed. Load comes
from wrk (apt-get install wrk) at 1, 8 and 64 connections, single encounters and batches (the sweep: one wrk
run per cell); the headlines are alternating rounds at 64 connections (--rounds; 0: none): ours and the
constant endpoint, then ours and each peer's strongest variants (for each peer and path, stock or our
compiled predictor: the fastest 64-client single-encounter sweep cell and any with at least half its req/s),
the ratio ours / other taken within each round, the first server of a round alternating; after each run of
ours the bench waits until its prediction log is written. The last lines give each goal's verdict, PASS or
FAIL, against the strongest peer (the lowest median within-round ratio): ours >= 10x the best peer on its
stock path, >= 3x the best peer calling our compiled predictor. With every peer and --seconds 10 a run takes
about 50 minutes on a 2-core machine, plus the peers' virtualenvs on the first run.

    make run   # once: trains and promotes a champion in var/ (Ctrl-C after it starts serving)
    .venv/bin/python bench/api.py --seconds 10       # everything; the first run makes the peers' virtualenvs
    .venv/bin/python bench/api.py --seconds 2 --rounds 1 --only ours litserve   # ours and LitServe's variants
    .venv/bin/python bench/api.py --no-peers         # no peers

The peers' virtualenvs take about 1.2 GB under var/bench-peers/ and are made from PyPI on first use (or ahead of
time: .venv/bin/python bench/peers/venvs.py litserve bentoml mlserver kserve).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from readmission import schema
from readmission.db import display_url, normalize_url
from readmission.registry import CHAMPION, MODEL_NAME

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the process helpers the tests use (dev tooling, as this is)
from livesupport import free_port, serve  # noqa: E402

import cli  # noqa: E402
from peers.catalog import BATCH_WINDOW_MS, PEERS, Variant, variants  # noqa: E402
from peers.venvs import HOME as PEER_HOME  # noqa: E402
from peers.venvs import PeerUnavailableError, ensure, installed_version  # noqa: E402

CLIENTS = (1, 8, 64)
CONTENDER_RATIO = 2.0  # headline_variants: a variant within this factor of its peer's fastest sweep cell
HEADLINE_CLIENTS = 64
BATCH_ROWS = 100
OURS_PATHS = {"single": "/predict", "batch": "/predict/batch"}
# With explanations (issue #21): the same bodies, each answer with its top 10 contributions (TreeSHAP).
EXPLAIN_PATHS = {**OURS_PATHS, "explain": "/predict?explain=true", "explain-batch": "/predict/batch?explain=true"}
OUR_SERVERS = ("ours", "ours-nobatch", "mlflow-serve", "naive", "constant")  # our_targets(), in its order
GOALS = {"stock": 10.0, "compiled": 3.0}  # ours / the best peer, on its stock path and with our predictor


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

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], ready_path: str, cwd: Path, body_key: str = ""
    ) -> None:
        self.name = name
        self.body_key = body_key or name  # whose request bodies it takes (a peer's variants share theirs)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.command = [part.replace("{port}", str(port)) for part in command]
        self.env = {**os.environ, **env, "PORT": str(port)}
        self.ready_path = ready_path
        self.cwd = cwd
        self.log_path = Path(tempfile.gettempdir()) / f"bench-api-{name.replace('/', '-')}.log"
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


@dataclass
class Target:
    """A server, what it is asked (mode -> path), and how its answers read as probabilities (None: not compared)."""

    server: Server
    paths: dict[str, str]
    modes: tuple[str, ...]
    read: Callable[[Any], list[Any]] | None = None
    variant: Variant | None = None
    logs: bool = False  # it queues a prediction-log row per prediction (ours): its writer works after wrk stops

    @property
    def name(self) -> str:
        return self.server.name

    def body(self, bodies: dict[str, Path], mode: str) -> Path:
        return bodies.get(f"{self.server.body_key}:{mode}", bodies[mode])

    def post(self, bodies: dict[str, Path], mode: str) -> httpx.Response:
        return httpx.post(self.server.url + self.paths[mode], content=self.body(bodies, mode).read_bytes(),
                          timeout=300, headers={"content-type": "application/json"})  # fmt: skip


@dataclass
class Results:
    """What the run measured and found."""

    cells: list[Cell] = field(default_factory=list)
    constant_rounds: list[tuple[Cell, Cell]] = field(default_factory=list)
    peer_rounds: dict[str, list[tuple[Cell, Cell]]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # server -> why it was not timed
    variants: dict[str, Variant] = field(default_factory=dict)
    logged: int | None = None
    peer_threads: str = ""


def warm(target: Target, mode: str, bodies: dict[str, Path]) -> None:
    """First requests pay imports, caches and JIT-like lazy paths in every server."""
    for _ in range(20):
        response = target.post(bodies, mode)
        if response.status_code != 200:
            raise RuntimeError(f"{target.name} {mode} answered {response.status_code}: {response.text[:500]}")


def wrk_cell(target: Target, mode: str, clients: int, bodies: dict[str, Path], seconds: float) -> Cell:
    """One wrk run, then one request more, answered once the server has worked off what wrk left queued (a
    server slower than its load still computes the requests wrk gave up on), and for ours a wait until its
    prediction log is written: the next run starts on an idle server, and the other server of a headline
    round on an idle machine (review of #24: our log writer and MariaDB went on inserting into the peer's run)."""
    rows = BATCH_ROWS if mode.endswith("batch") else 1
    rps, p50, p99, errors = run_wrk(target.server.url + target.paths[mode], target.body(bodies, mode), clients, seconds)
    target.post(bodies, mode)
    if target.logs:
        wait_log_written(target.server.url)
    return Cell(target.name, mode, clients, rps, p50, p99, errors, rows)


def wait_log_written(url: str, timeout: float = 600.0) -> None:
    """Wait until our API at ``url`` has written every prediction-log row it queued (its
    ``inference_prediction_log_queue_depth`` is 0). Raises RuntimeError past ``timeout`` seconds (a hang guard:
    the log database is down or far slower than the load)."""
    deadline = time.monotonic() + timeout
    while True:
        exposition = httpx.get(url + "/metrics", timeout=30).text
        depths = [
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "inference_prediction_log_queue_depth"
        ]
        if not depths:
            raise RuntimeError(f"{url}/metrics has no inference_prediction_log_queue_depth")
        if depths[0] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: {depths[0]:g} prediction-log rows still unwritten after {timeout:g} s")
        time.sleep(0.1)


def measure(target: Target, bodies: dict[str, Path], seconds: float) -> list[Cell]:
    cells = []
    for mode in target.modes:
        warm(target, mode, bodies)
        for clients in CLIENTS:
            cell = wrk_cell(target, mode, clients, bodies, seconds)
            cells.append(cell)
            print(f"  {target.name:26} {mode:6} {clients:3} clients: {cell.rps:8.1f} req/s  p50 {cell.p50_ms:7.1f} ms"
                  f"  p99 {cell.p99_ms:7.1f} ms  failed {cell.errors}", flush=True)  # fmt: skip
    return cells


def _differs(got: list[Any], want: list[list[float]]) -> str:
    """How two answers differ: shape, or the largest difference and the first rows."""
    if len(got) != len(want) or any(len(g) != len(w) for g, w in zip(got, want, strict=False)):
        return f"{len(got)} rows for {len(want)} asked"
    gap = max(abs(g - w) for grow, wrow in zip(got, want, strict=True) for g, w in zip(grow, wrow, strict=True))
    return f"probabilities differ from ours by up to {gap:.3g} (first row {got[0]} vs {want[0]})"


def identity(
    target: Target, bodies: dict[str, Path], reference: dict[str, list[list[float]]], classes: list[str]
) -> str:
    """'' when the server answers the probabilities ours computes for the single and the batch request (to the
    last bit), else what differs: a server answering class labels (a model logged before #24, whose pyfunc
    predicts labels) is refused, as the comparison would be of different outputs."""
    assert target.read is not None
    for mode in ("single", "batch"):
        response = target.post(bodies, mode)
        if response.status_code != 200:
            return f"its {mode} request answered {response.status_code}: {response.text[:200]}"
        got, want = target.read(response.json()), reference[mode]
        if got and all(isinstance(value, str) for value in got):
            return f"its {mode} answer is class labels {got[:3]}, not probabilities (a model logged before #24?)"
        if got != want:
            return f"its {mode} answer: {_differs(got, want)}"
        print(f"  {target.name} {mode}: the same probabilities as ours, all {len(want) * len(want[0])} floats")
    return ""


def sweep(target: Target, bodies: dict[str, Path], args: argparse.Namespace, results: Results, check: Any) -> None:
    """Start the server, compare its answers with ours, then time it (unless they differ)."""
    print(f"== {target.name}", flush=True)
    with target.server:
        problem = identity(target, bodies, *check) if target.read is not None else ""
        if problem:
            results.refused[target.name] = problem
            print(f"  NOT TIMED: {target.name}: {problem}", flush=True)
            return
        results.cells += measure(target, bodies, args.seconds)
    if target.name == "ours":
        results.logged = _count(args.log_url, "prediction_log")


def sweep_peer(target: Target, bodies: dict[str, Path], args: argparse.Namespace, results: Results, check: Any) -> None:
    """``sweep`` for a peer variant: one that fails to start is skipped, with the reason in one line."""
    try:
        sweep(target, bodies, args, results, check)
    except (RuntimeError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
        reason = _reason(exc)
        results.refused[target.name] = f"failed: {reason}"
        print(f"  SKIPPED: {target.name}: {reason} (log: {target.server.log_path})", flush=True)


def _reason(exc: Exception) -> str:
    """One line of why a server failed: its log's last error line (``serve`` quotes the log's tail), else the last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
    errors = [line for line in lines if re.search(r"error|exception|did not come up", line, re.I)]
    return (errors or lines)[-1][:240]


def alternate(
    ours: Target, other: Target, bodies: dict[str, Path], seconds: float, count: int
) -> list[tuple[Cell, Cell]]:
    """Both up; wrk at 64 connections on one, then the other, ``count`` times, the first of a round alternating
    (noise and any after-effect of a run hit both alike)."""
    for target in (ours, other):
        warm(target, "single", bodies)
    pairs = []
    for number in range(1, count + 1):
        order = (ours, other) if number % 2 else (other, ours)
        cells = {t.name: wrk_cell(t, "single", HEADLINE_CLIENTS, bodies, seconds) for t in order}
        a, b = cells[ours.name], cells[other.name]
        print(f"  round {number}: ours {a.rps:8.1f} req/s (p99 {a.p99_ms:6.1f} ms, failed {a.errors})  {other.name} "
              f"{b.rps:8.1f} req/s (p99 {b.p99_ms:6.1f} ms, failed {b.errors})  ratio {_ratio(a, b):.2f}",
              flush=True)  # fmt: skip
        pairs.append((a, b))
    return pairs


def headline_variants(results: Results) -> list[str]:
    """The peer variants the alternating rounds compare with ours: for each peer, on its stock path and with our
    predictor, the fastest timed variant at 64 clients (single encounters) and any within ``CONTENDER_RATIO``
    of it. A sweep cell is one run, and this machine's speed drifts by up to 2x between runs: a variant a
    little behind in the sweep may be the stronger one (review of #24), so the rounds decide."""
    best: dict[tuple[str, str], float] = {}
    timed: list[tuple[tuple[str, str], Cell]] = []
    for cell in results.cells:
        variant = results.variants.get(cell.server)
        if variant and cell.mode == "single" and cell.clients == HEADLINE_CLIENTS:
            key = (variant.peer.name, variant.predictor)
            best[key] = max(best.get(key, 0.0), cell.rps)
            timed.append((key, cell))
    return [cell.server for key, cell in timed if cell.rps * CONTENDER_RATIO >= best[key]]


def peer_headline(targets: list[Target], bodies: dict[str, Path], args: argparse.Namespace, results: Results) -> None:
    ours = next((t for t in targets if t.name == "ours"), None)
    chosen = [t for t in targets if t.name in headline_variants(results)]
    if not chosen or not args.rounds:
        return
    if ours is None:
        print("== no headline against the peers: 'ours' is not among --only", flush=True)
        return
    print(f"== headline: ours and each peer's strongest variants, alternately, {args.rounds} rounds at 64 clients")
    with ours.server:
        for peer in chosen:
            print(f"-- ours and {peer.name}", flush=True)
            try:
                with peer.server:
                    results.peer_rounds[peer.name] = alternate(ours, peer, bodies, args.seconds, args.rounds)
            except (RuntimeError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
                print(f"  SKIPPED: {peer.name}: {_reason(exc)}", flush=True)


def real_encounters(clean_url: str, n: int) -> list[dict[str, Any]]:
    """``n`` real encounters of the CLEAN test split (what `make run` built), as API request bodies."""
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


def in_process(model: Any, encounters: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Median milliseconds of predict_proba on 1 and 1,000 rows: pipeline vs the service's fast path."""
    from readmission.serving import Predictor, rows_to_frame

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


def parse_args() -> argparse.Namespace:
    parser = cli.parser(__doc__)
    cli.add_api_store_options(parser)
    parser.add_argument("--clean-url", default="sqlite:///var/clean.db", help="CLEAN database: real batch bodies")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SERVER",
        help=f"run only these servers ({', '.join(OUR_SERVERS)}, a peer: all its variants, or one variant as "
        "peer/variant, e.g. litserve/stock-batching)",
    )
    _add_peer_options(parser)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="headlines: rounds of 'ours' and the constant endpoint, then of 'ours' and each peer's strongest variants "
        f"(within {CONTENDER_RATIO:g}x of its fastest sweep cell), measured alternately at 64 clients, the first of a "
        "round alternating",
    )
    args = parser.parse_args()
    check_args(parser, args)
    args.ours_window = _ours_window(args)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (or brew install wrk)")
    return args


def _add_peer_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS), help="serving peers to run")
    which.add_argument("--no-peers", action="store_true", help="run no serving peer")
    parser.add_argument(
        "--peer-omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the peers' servers (0: the library's default, a thread per core); scikit-learn's "
        "OpenMP trees on every core of a machine that also runs the load generator (and any other work) can be "
        "tens of times slower per call than on one thread",
    )
    parser.add_argument(
        "--ours-wait-ms",
        type=float,
        default=argparse.SUPPRESS,
        help=f"MICROBATCH_MAX_WAIT_MS of ours (default: the peers' window, {BATCH_WINDOW_MS:g} ms, when a peer "
        "with batching runs, so that ours may wait as long for more requests as they do; else the service's own "
        "default)",
    )


def _ours_window(args: argparse.Namespace) -> str | None:
    """MICROBATCH_MAX_WAIT_MS for ours: --ours-wait-ms, else the peers' window when a peer that batches runs,
    else None (the service's default)."""
    if (wait := getattr(args, "ours_wait_ms", None)) is not None:
        return f"{wait:g}"
    batching = any(PEERS[name].batches for name in args.peers if selected(name, args.only))
    return f"{BATCH_WINDOW_MS:g}" if batching else None


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, with one line naming the option, a selection that would run nothing or something unasked."""
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        parser.error(f"--seconds must be a finite number more than 0, got {args.seconds:g}")
    if args.rounds < 0:
        parser.error(f"--rounds must be 0 or more, got {args.rounds}")
    wait = getattr(args, "ours_wait_ms", None)
    if wait is not None and not (math.isfinite(wait) and wait >= 0):
        parser.error(f"--ours-wait-ms must be a finite number of milliseconds, 0 or more, got {wait:g}")
    unknown = sorted(set(args.only or ()) - known_servers())
    if unknown:
        parser.error(
            f"--only: unknown server(s) {', '.join(unknown)}; choose from {', '.join(sorted(known_servers()))}"
        )
    if args.no_peers:
        args.peers = []
    left_out = sorted(
        name for name in args.only or () if name.split("/")[0] in PEERS and name.split("/")[0] not in args.peers
    )
    if left_out:
        parser.error(f"--only names {', '.join(left_out)}, which --peers / --no-peers leave out")


def known_servers() -> set[str]:
    """Every name --only takes: our servers, each peer and each peer variant."""
    return {*OUR_SERVERS, *PEERS, *(v.name for peer in PEERS.values() for v in variants(peer))}


def selected(name: str, only: list[str] | None) -> bool:
    """Whether --only asks for server ``name``: itself, its peer (``litserve``) or one of its variants."""
    if only is None or name in only or name.split("/")[0] in only:
        return True
    return any(asked.startswith(f"{name}/") for asked in only)


def champion(tracking_uri: str) -> tuple[str, Any]:
    """The champion's model URI and model (loaded as every server loads it)."""
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:"):  # MLflow would make an empty store (and its folders) at a typo
        store = Path(make_url(tracking_uri).database or "")
        if not store.is_file():
            sys.exit(f"no MLflow store at {store} (--tracking-uri {tracking_uri}); run `make run` first")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except Exception as exc:
        sys.exit(f"no '{CHAMPION}' of {MODEL_NAME} in {tracking_uri} ({exc}); run `make run` first")
    model_uri = f"models:/{MODEL_NAME}/{version.version}"
    mlflow.set_tracking_uri(tracking_uri)
    return model_uri, mlflow.sklearn.load_model(model_uri)


def reference(model: Any, single: list[dict[str, Any]], batch: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """What ours computes for the two identity requests (its predictor), and whether the pipeline agrees."""
    from readmission.serving import Predictor, rows_to_frame

    predictor = Predictor(model)
    ours = {"single": predictor.predict_proba(single).tolist(), "batch": predictor.predict_proba(batch).tolist()}
    stock = {
        mode: model.predict_proba(rows_to_frame(rows)).tolist() for mode, rows in (("single", single), ("batch", batch))
    }
    agree = "to the last bit" if stock == ours else "NOT to the last bit: " + _differs(stock["batch"], ours["batch"])
    print(f"in process: the pipeline's predict_proba and our predictor ({predictor.path}) agree {agree}")
    return ours


def write_bodies(work: Path, single: list[dict[str, Any]], encounters: list[dict[str, Any]]) -> dict[str, Path]:
    """Every server's request bodies: one encounter and the batch, in its protocol (``server:mode`` keys)."""
    contents: dict[str, Any] = {
        "single": single[0],
        "batch": {"encounters": encounters},
        "mlflow-serve:single": {"dataframe_records": single},
        "mlflow-serve:batch": {"dataframe_records": encounters},
        "naive:single": single[0],
    }
    for peer in PEERS.values():
        contents[f"{peer.name}:single"], contents[f"{peer.name}:batch"] = (
            peer.body(single, False),
            peer.body(encounters, True),
        )
    bodies = {}
    for key, content in contents.items():
        bodies[key] = work / f"{key.replace(':', '-')}.json"
        bodies[key].write_text(json.dumps(content))
    bodies["explain"], bodies["explain-batch"] = bodies["single"], bodies["batch"]
    return bodies


def our_targets(args: argparse.Namespace, model_uri: str, classes: list[str]) -> list[Target]:
    python = sys.executable
    mlflow_bin = str(Path(python).with_name("mlflow"))
    # mlflow models serve starts `uvicorn` by name: the environment's bin folder must be on PATH.
    path = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    common = {"MLFLOW_TRACKING_URI": args.tracking_uri, "LOG_LEVEL": "warning", "PATH": path}
    ours_env = {
        **common,
        "PREDICTION_LOG_URL": args.log_url,
        "MODEL_POLL_INTERVAL_SECONDS": "3600",
        "DEVELOPMENT_MODE": "true",
    }
    if args.ours_window is not None:
        ours_env["MICROBATCH_MAX_WAIT_MS"] = args.ours_window
    ours = ours_reader(classes)
    return [
        Target(Server("ours", [python, "-m", "inference_api"], ours_env, "/health/ready", ROOT), EXPLAIN_PATHS,
               ("single", "batch", "explain", "explain-batch"), ours, logs=True),
        Target(Server("ours-nobatch", [python, "-m", "inference_api"], {**ours_env, "MICROBATCH_ENABLED": "false"},
                      "/health/ready", ROOT), OURS_PATHS, ("single", "batch"), ours, logs=True),
        Target(Server("mlflow-serve", [mlflow_bin, "models", "serve", "-m", model_uri, "-w", "1", "--env-manager",
                                       "local", "-h", "127.0.0.1", "-p", "{port}"], common, "/ping", ROOT),
               {"single": "/invocations", "batch": "/invocations"}, ("single", "batch"), lambda a: a["predictions"]),
        Target(Server("naive", [python, "-m", "uvicorn", "naive_api:app", "--app-dir", str(HERE / "servers"), "--port",
                                "{port}", "--log-level", "warning"],
                      {**common, "MODEL_URI": model_uri, "LOG_URL": args.log_url}, "/docs", ROOT), {"single": "/predict"},
               ("single",)),
        Target(Server("constant", [python, "-m", "uvicorn", "constant_api:app", "--port", "{port}", "--log-level",
                                   "warning"], {}, "/docs", HERE / "servers"), {"single": "/predict"}, ("single",)),
    ]  # fmt: skip


def ours_reader(classes: list[str]) -> Callable[[Any], list[Any]]:
    """Our answers (one Scores, or ``predictions`` of them) as probability rows in ``classes`` order."""

    def read(answer: dict[str, Any]) -> list[Any]:
        scores = answer.get("predictions", [answer])
        return [[score["probabilities"][label] for label in classes] for score in scores]

    return read


def peer_targets(args: argparse.Namespace, model_uri: str, results: Results) -> list[Target]:
    """Every variant of the peers asked for, each peer's virtualenv made first (a peer that cannot be is skipped)."""
    targets = []
    for peer in (PEERS[name] for name in args.peers if selected(name, args.only)):
        try:
            python = ensure(peer.name)
        except PeerUnavailableError as exc:
            print(f"  SKIPPED: {peer.name}: {exc}", flush=True)
            continue
        print(f"  {peer.name} {installed_version(python, peer.package)} in {python.parents[1].relative_to(ROOT)}; "
              f"batching: {peer.batching}", flush=True)  # fmt: skip
        env = {
            "MODEL_URI": model_uri,
            "MLFLOW_TRACKING_URI": absolute_uri(args.tracking_uri),
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "BENTOML_HOME": str(PEER_HOME / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "true",
        }
        if args.peer_omp_threads:
            env["OMP_NUM_THREADS"] = str(args.peer_omp_threads)
        for variant in variants(peer):
            if selected(variant.name, args.only):
                results.variants[variant.name] = variant
                server = Server(variant.name, [str(python), str(HERE / "peers" / peer.script)], {**env, **variant.env()},
                                peer.ready_path, ROOT, body_key=peer.name)  # fmt: skip
                paths = {"single": peer.path, "batch": peer.path}
                targets.append(Target(server, paths, ("single", "batch"), peer.probabilities, variant))
    return targets


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///path`` made absolute (from the repository's root): the same store from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(ROOT / uri[len(prefix) :])
    return uri


@contextlib.contextmanager
def log_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh prediction-log database ``<prefix>_<random>`` on the server of ``admin_url`` (dropped afterwards);
    yields its URL. Exits with a message naming --mysql-url when the database cannot be created."""
    admin = normalize_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except SQLAlchemyError as exc:
        sys.exit(f"cannot create a prediction-log database at {display_url(admin)} ({type(exc).__name__}); start "
                 "MariaDB/MySQL or pass --mysql-url (or BENCH_MYSQL_URL) with a user that may create databases")  # fmt: skip
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()


def main() -> None:
    args = parse_args()
    model_uri, model = champion(args.tracking_uri)
    window = args.ours_window
    print(f"champion: {model_uri} ({args.tracking_uri}); {args.seconds:g} s per cell; ours' batching window "
          f"(MICROBATCH_MAX_WAIT_MS): {'the service default' if window is None else window + ' ms'}")  # fmt: skip
    encounters = real_encounters(args.clean_url, BATCH_ROWS)
    single = [list(schema.EXAMPLE_ENCOUNTERS.values())[1]]
    classes = [str(label) for label in model.classes_]
    check = (reference(model, single, encounters), classes)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    results = Results()
    try:
        with log_database(args.mysql_url, "bench_api") as args.log_url:
            bodies = write_bodies(work, single, encounters)
            run(args, model_uri, classes, bodies, check, results)
        print("== in-process predict_proba", flush=True)
        model_ceiling = in_process(model, encounters)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, model_ceiling)


def run(
    args: argparse.Namespace, model_uri: str, classes: list[str], bodies: dict[str, Path], check: Any, results: Results
) -> None:
    """Every server asked for, in turn; then the headlines' alternating rounds."""
    targets = our_targets(args, model_uri, classes)
    assert tuple(t.name for t in targets) == OUR_SERVERS, "OUR_SERVERS must name our_targets() in order"
    ours = [t for t in targets if selected(t.name, args.only)]
    for target in ours:
        sweep(target, bodies, args, results, check)
    if args.rounds and {"ours", "constant"} <= {t.name for t in ours}:
        print(f"== headline: ours and constant, alternately, {args.rounds} rounds at 64 clients", flush=True)
        ours_target, constant = (next(t for t in ours if t.name == n) for n in ("ours", "constant"))
        with ours_target.server, constant.server:
            results.constant_rounds = alternate(ours_target, constant, bodies, args.seconds, args.rounds)
    if args.peers:
        results.peer_threads = str(args.peer_omp_threads or "the library's default")
        print(f"== serving peers (OMP_NUM_THREADS: {results.peer_threads}; --peer-omp-threads)", flush=True)
    peers = peer_targets(args, model_uri, results)
    for target in peers:
        sweep_peer(target, bodies, args, results, check)
    peer_headline([*ours, *peers], bodies, args, results)


def _count(url: str, table: str) -> int:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def report(results: Results, model_ceiling: list[tuple[str, float]]) -> None:
    cells = results.cells
    print()
    print(
        f"{'server':26} {'mode':13} {'clients':>7} {'req/s':>9} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"
    )
    for c in cells:
        print(f"{c.server:26} {c.mode:13} {c.clients:7d} {c.rps:9.1f} {c.rows_per_second:9.0f} {c.p50_ms:8.1f} "
              f"{c.p99_ms:8.1f} {c.errors:7d}")  # fmt: skip
    print()
    for label, ms in model_ceiling:
        print(f"in-process {label}: {ms:.2f} ms")
    if results.logged is not None:
        print(f"prediction-log rows written by 'ours' (MariaDB): {results.logged:,}")
    for name, why in results.refused.items():
        print(f"not timed: {name}: {why}")
    baselines(cells, results.constant_rounds)
    explained(cells)
    peers_report(results)


def at64(cells: list[Cell], server: str) -> Cell | None:
    return next((c for c in cells if c.server == server and c.mode == "single" and c.clients == 64), None)


def baselines(cells: list[Cell], rounds: list[tuple[Cell, Cell]]) -> None:
    ours, mlflow_serve, constant, naive, nobatch = (
        at64(cells, s) for s in ("ours", "mlflow-serve", "constant", "naive", "ours-nobatch")
    )
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


def _ratio(ours: Cell, peer: Cell) -> float:
    return ours.rps / peer.rps if peer.rps else float("inf")  # a peer that completed no request in the run


def _ratios(pairs: list[tuple[Cell, Cell]]) -> list[float]:
    return [_ratio(ours, peer) for ours, peer in pairs]


def peers_report(results: Results) -> None:
    """The peers' table: each variant at 64 clients (single encounters) and ours / it within alternating rounds."""
    if not results.variants:
        return
    print("\nserving peers at 64 clients, single-encounter requests, one worker each; 'ours' logs every prediction;")
    print(f"the peers' OMP_NUM_THREADS: {results.peer_threads} (--peer-omp-threads)")
    print("req/s and p99: medians of the alternating rounds where the variant had them, else its sweep's cell")
    print(f"{'peer':9} {'variant':36} {'req/s':>9} {'p99 ms':>8} {'failed':>6}  {'ours/peer':>9}  rounds (ours/peer)")
    ours_cells = [o for pairs in results.peer_rounds.values() for o, _ in pairs]
    if ours_cells:
        print(f"{'ours':9} {'micro-batching, prediction log':36} {statistics.median(c.rps for c in ours_cells):9.1f} "
              f"{statistics.median(c.p99_ms for c in ours_cells):8.1f} {sum(c.errors for c in ours_cells):6d}")  # fmt: skip
    for name, variant in results.variants.items():
        print(f"{variant.peer.name:9} {variant.label:36} {_peer_line(results, name)}")
    for peer in {v.peer.name: v.peer for v in results.variants.values()}.values():
        print(f"  {peer.name} batching: {peer.batching}")
    goals(results)


def _peer_line(results: Results, name: str) -> str:
    if name in results.refused:
        return f"not timed: {results.refused[name]}"
    pairs = results.peer_rounds.get(name)
    cells = [peer for _, peer in pairs] if pairs else [c for c in [at64(results.cells, name)] if c]
    if not cells:
        return "no measurement"
    rps, p99 = statistics.median(c.rps for c in cells), statistics.median(c.p99_ms for c in cells)
    line = f"{rps:9.1f} {p99:8.1f} {sum(c.errors for c in cells):6d}"
    if pairs:
        ratios = _ratios(pairs)
        line += f"  {statistics.median(ratios):8.2f}x  {', '.join(f'{r:.2f}' for r in ratios)}"
    return line


def goals(results: Results) -> None:
    """ours / the strongest peer (the lowest median within-round ratio), on its stock path and with our predictor."""
    for predictor, goal in GOALS.items():
        ratios = {
            name: statistics.median(_ratios(pairs))
            for name, pairs in results.peer_rounds.items()
            if results.variants[name].predictor == predictor
        }
        what = "on its stock path" if predictor == "stock" else "calling our compiled predictor"
        if not ratios:
            print(f"goal: ours >= {goal:g}x the best peer {what}: not measured (no alternating rounds)")
            continue
        strongest = min(ratios, key=ratios.__getitem__)
        verdict = "PASS" if ratios[strongest] >= goal else "FAIL"
        print(f"goal: ours >= {goal:g}x the best peer {what}: {ratios[strongest]:.2f}x against {strongest}: {verdict}")


if __name__ == "__main__":
    main()
