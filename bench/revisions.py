"""The inference API at two revisions, side by side: single-encounter requests per second at 64 clients.

A change to the serving path moves throughput by a few per cent, and this machine's speed drifts by more than
that from one minute to the next, so two runs made apart say little. Here both servers run at once, on the
same champion, each logging to a MariaDB database of its own, each from an empty folder (no `.env`); both
must first answer the same request with the same JSON. wrk runs on each in turn (the order alternates; after
each timed run the bench waits until that server's prediction log is written), --pairs times; a run with a
failed request stops the bench. The headline is the median of the within-pair ratios, head / base (above 1:
head is faster), with how many pairs head won. A run takes about --pairs x 2 x --seconds plus two starts.

A revision is a commit (checked out into a temporary git worktree and run with this checkout's virtualenv,
its code first on PYTHONPATH) or "." for the working tree as it is. --base-env and --head-env give one side
settings of its own (NAME=VALUE, repeatable), so the same code can be compared with two settings.

Needs wrk (apt-get install wrk), a champion in the registry (`make run` makes one) and a MariaDB/MySQL user
allowed to create databases; run it from the repository's root (the defaults are relative to it).

    make run   # once: trains and promotes a champion in var/ (Ctrl-C after it starts serving)
    .venv/bin/python bench/revisions.py --base HEAD~1 --head HEAD   # the last commit's change
    .venv/bin/python bench/revisions.py --base HEAD                 # uncommitted edits against the last commit
    .venv/bin/python bench/revisions.py --base 606f705 --head main --pairs 20
    .venv/bin/python bench/revisions.py --base . --head-env MICROBATCH_MAX_WAIT_MS=10   # a setting, same code

The median of the per-pair ratios need not equal the ratio of the two median rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cli  # noqa: E402
from api import Server, absolute_uri, log_database, run_wrk, wait_log_written  # noqa: E402
from inference_api.settings import ApiSettings  # noqa: E402
from readmission import schema  # noqa: E402

CLIENTS = 64


def parse_args() -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument(
        "--base", required=True, default=argparse.SUPPRESS, help="the revision compared against (a commit, or '.')"
    )
    parser.add_argument("--head", default=".", help="the revision measured (a commit, or '.': the working tree)")
    parser.add_argument("--pairs", type=int, default=10, help="number of pairs: one wrk run on each revision per pair")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each wrk run")
    for side in ("base", "head"):
        parser.add_argument(
            f"--{side}-env", action="append", default=argparse.SUPPRESS, metavar="NAME=VALUE", type=_setting,
            help=f"a setting of the {side} server only: an inference API setting's variable (repeatable)",
        )  # fmt: skip
    cli.add_api_store_options(parser)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if not (math.isfinite(args.seconds) and args.seconds >= 1):
        parser.error(f"--seconds must be a number of seconds, at least 1 (wrk's resolution), got {args.seconds}")
    for option in ("base", "head"):
        revision = getattr(args, option)
        if revision != "." and _commit(revision) is None:
            parser.error(f"--{option} {revision!r} is not a commit of this repository: give a commit, branch, tag "
                         "or '.' for the working tree (git log --oneline lists commits)")  # fmt: skip
    for side in ("base", "head"):
        setattr(args, f"{side}_env", _settings(parser, f"--{side}-env", getattr(args, f"{side}_env", [])))
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")
    return args


# Set by the bench for both servers (api_server): a side may not change them.
_HARNESS = frozenset({"PYTHONPATH", "MLFLOW_TRACKING_URI", "PREDICTION_LOG_URL", "MODEL_POLL_INTERVAL_SECONDS",
                      "DEVELOPMENT_MODE", "LOG_LEVEL"})  # fmt: skip


def _settings(parser: argparse.ArgumentParser, option: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``pairs`` as a dict; a usage error for a name the API does not read (a typo would compare two equal
    servers), a name the bench sets itself, or a name given twice."""
    known = {name.upper() for name in ApiSettings.model_fields}
    names = [name for name, _ in pairs]
    for name in names:
        if name not in known or name in _HARNESS:
            why = (
                "the bench sets it for both servers" if name in _HARNESS else "the inference API reads no such setting"
            )
            parser.error(f"{option} {name}: {why} (settings: inference-api/.env.example)")
        if names.count(name) > 1:
            parser.error(f"{option} {name} is given twice")
    return dict(pairs)


def _setting(text: str) -> tuple[str, str]:
    """NAME=VALUE as a pair (argparse reports a bad one as a usage error naming the option)."""
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE with an upper-case environment variable name")
    return name, value


def _commit(revision: str) -> str | None:
    """The short hash of ``revision``'s commit, or None when git knows no such commit."""
    resolved = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{revision}^{{commit}}"], capture_output=True, text=True
    )
    return resolved.stdout.strip() if resolved.returncode == 0 and revision else None


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[tuple[str, Path]]:
    """``revision``'s short name and source folder: the working tree for ".", else a temporary worktree."""
    if revision == ".":
        yield "working tree", ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-revision-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), revision], check=True)
    try:
        yield _commit(revision) or revision, folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def api_server(name: str, source: Path, args: argparse.Namespace, log_url: str, work: Path) -> Server:
    """``python -m inference_api`` from ``source`` (its packages first on the path), as bench/api.py runs ours,
    in an empty folder of its own under ``work`` (a ``.env`` in the checkout must not reach either revision)."""
    paths = [str(source / "inference-api"), str(source / "src")]
    env = {
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "MLFLOW_TRACKING_URI": absolute_uri(args.tracking_uri),  # the same store from the empty folder
        "PREDICTION_LOG_URL": log_url,
        "MODEL_POLL_INTERVAL_SECONDS": "3600",
        "DEVELOPMENT_MODE": "true",
        "LOG_LEVEL": "warning",
        **getattr(args, f"{name}_env"),
    }
    folder = work / name
    folder.mkdir()
    return Server(name, [sys.executable, "-m", "inference_api"], env, "/health/ready", folder)


def same_answers(base: Server, head: Server, body: Path) -> None:
    """Exit, naming the difference, unless both revisions answer ``body`` 200 with the same JSON (the request
    id apart): a revision that answers an error, or something else, would be timed on other work."""
    answers = []
    for server in (base, head):
        response = httpx.post(server.url + "/predict", content=body.read_bytes(), timeout=60,
                              headers={"content-type": "application/json"})  # fmt: skip
        if response.status_code != 200:
            sys.exit(f"{server.name} answered {response.status_code}: {response.text[:300]}")
        answers.append({k: v for k, v in response.json().items() if k != "request_id"})
    if answers[0] != answers[1]:
        sys.exit(f"the revisions answer differently: base {answers[0]} head {answers[1]}")


def measure(base: Server, head: Server, body: Path, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(base, head) req/s of each pair of wrk runs; the first server of a pair alternates."""
    for server in (base, head):
        run_wrk(server.url + "/predict", body, CLIENTS, 2)  # warm-up, not counted
    pairs = []
    for i in range(args.pairs):
        order = (base, head) if i % 2 == 0 else (head, base)
        rates = {s.name: _rate(s, body, args.seconds) for s in order}
        pairs.append((rates[base.name], rates[head.name]))
        print(f"  pair {i + 1}: base {pairs[-1][0]:9,.1f} req/s  head {pairs[-1][1]:9,.1f} req/s  "
              f"head/base {pairs[-1][1] / pairs[-1][0]:.3f}", flush=True)  # fmt: skip
    return pairs


def _rate(server: Server, body: Path, seconds: float) -> float:
    """Requests/s of one wrk run; exits when any request failed (wrk counts a failed answer as a request, so a
    revision that fails fast would look faster). Returns once the server's prediction log is written."""
    rps, _, _, errors = run_wrk(server.url + "/predict", body, CLIENTS, seconds)
    if errors:
        sys.exit(f"{server.name}: {errors} failed requests in a {seconds:g} s run (log: {server.log_path})")
    wait_log_written(server.url)
    return rps


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # through the context managers: servers, worktrees and databases go


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-revisions-") as work,
        checkout(args.base) as (base_name, base_source),
        checkout(args.head) as (head_name, head_source),
        log_database(args.mysql_url, "bench_rev") as base_log,
        log_database(args.mysql_url, "bench_rev") as head_log,
    ):
        body = Path(work) / "single.json"
        body.write_text(json.dumps(list(schema.EXAMPLE_ENCOUNTERS.values())[1]))
        base_name += "".join(f" {k}={v}" for k, v in args.base_env.items())
        head_name += "".join(f" {k}={v}" for k, v in args.head_env.items())
        print(f"base {base_name}, head {head_name}: single encounters, {CLIENTS} clients, {args.seconds:g} s runs")
        with (
            api_server("base", base_source, args, base_log, Path(work)) as base,
            api_server("head", head_source, args, head_log, Path(work)) as head,
        ):
            same_answers(base, head, body)
            pairs = measure(base, head, body, args)
    ratios = [h / b for b, h in pairs]
    won = sum(r > 1 for r in ratios)
    print(f"head / base: median {statistics.median(ratios):.3f} over {len(ratios)} pairs (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}; head faster in {won} of {len(ratios)}); base median "
          f"{statistics.median(b for b, _ in pairs):,.1f} req/s, head median "
          f"{statistics.median(h for _, h in pairs):,.1f} req/s")  # fmt: skip


if __name__ == "__main__":
    main()
