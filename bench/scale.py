"""How the pipeline's cost grows with the data: load-raw, build-clean and train on 1x, 3x and 10x the real file,
on PostgreSQL (as deployed) and on the embedded default (SQLite), each stage the real `readmission` command in a
process of its own. Prints per stage: seconds, peak RSS (the process's own, from wait4), rows/s, and the growth
from the smallest to the largest factor (linear: growth <= the data's growth, plus 10 % for noise), then each
run's champion.

The larger sets follow the real file (readmission.upsample: the file itself, then patient-bootstrap replicas
with new patient and encounter ids), written once into --work and reused. A whole default run took about 40
minutes on 2 cores and writes about 270 MB of sets (the 10x file is 194 MB):

    make run   # once: downloads the UCI file to var/uci/diabetic_data.csv (the default --data)
    .venv/bin/python bench/scale.py                                           # 1x, 3x, 10x; both stores
    .venv/bin/python bench/scale.py --factors 1 10 --stores sqlite --budget 60  # quicker look
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

import cli  # bench/cli.py (the script's folder is on the path)
from readmission.cli.settings import Settings
from readmission.db import display_url, normalize_url
from readmission.upsample import GENERATOR_VERSION, write_upsampled_csv

STAGES = ("load-raw", "build-clean", "train")


PEAK_RSS_GOAL_GB = 4.0


@dataclass(frozen=True)
class Stage:
    """One stage's run: wall seconds and the process's peak resident set."""

    store: str
    factor: int
    stage: str
    rows: int
    seconds: float
    peak_rss_mb: float
    output: str


def run_stage(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[float, float, str]:
    """Run ``command`` (output to ``log`` as it comes); its wall seconds, peak RSS in MB (ru_maxrss of this child
    alone, via wait4) and output."""
    with log.open("w+b") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output  # ru_maxrss is in KiB on Linux


def data_file(source: Path, work: Path, factor: int) -> tuple[Path, int]:
    """The ``factor``-times file of ``source`` in ``work`` (written once: its name carries the source's checksum
    and the generator's version, so another source or generator never reuses it) and its data rows."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = work / f"{source.stem}-{digest}-g{GENERATOR_VERSION}-x{factor}.csv"
    if not target.exists():
        partial = target.with_suffix(".partial")
        try:
            write_upsampled_csv(source, partial, factor)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if not isinstance(exc, KeyError | ValueError):  # KeyError, ValueError: not the UCI file
                raise
            why = f"it has no {exc} column" if isinstance(exc, KeyError) else str(exc)
            sys.exit(f"{source}: cannot make the {factor}x set ({why}); pass --data the UCI diabetic_data.csv")
        partial.rename(target)
    with target.open("rb") as handle:
        rows = sum(1 for _ in handle) - 1
    return target, rows


class Stores:
    """Fresh RAW and CLEAN databases per run: SQLite files, or databases on a PostgreSQL server (dropped)."""

    def __init__(self, postgres_admin: str) -> None:
        self.admin = normalize_url(postgres_admin)
        self.created: list[str] = []

    def urls(self, store: str, folder: Path) -> dict[str, str]:
        if store == "sqlite":
            return {}  # the CLI's embedded default: DATA_DIR/raw.db and DATA_DIR/clean.db
        urls = {}
        for role in ("raw", "clean"):
            name = f"bench_scale_{role}_{uuid.uuid4().hex[:8]}"
            self._execute(f"CREATE DATABASE {name}")
            self.created.append(name)
            urls[f"{role.upper()}_DATABASE_URL"] = make_url(self.admin).set(database=name).render_as_string(False)
        return urls

    def unreachable(self) -> str:
        """'' when the server answers, else why not (one line)."""
        try:
            self._execute("SELECT 1")
        except Exception as exc:
            return f"no PostgreSQL at {display_url(self.admin)} ({str(exc).splitlines()[0][:200]})"
        return ""

    def drop_all(self) -> None:
        for name in self.created:
            self._execute(f"DROP DATABASE IF EXISTS {name}")

    def _execute(self, sql: str) -> None:
        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        finally:
            engine.dispose()


def run_pipeline(
    store: str, factor: int, data: Path, rows: int, stores: Stores, args: argparse.Namespace
) -> list[Stage]:
    """The stages of one (store, factor), each a `readmission` process in a fresh folder, with the CLI's defaults
    (no setting of this shell or of a .env reaches it: it never touches a configured database or registry). A
    stage that fails is printed with its log and ends this pipeline; the others go on."""
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{store}-x{factor}-", dir=args.work)).resolve()
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env |= {"DATA_DIR": str(folder), "DATA_PATH": str(data.resolve()), **stores.urls(store, folder)}
    if (budget := getattr(args, "budget", None)) is not None:  # not given: the CLI's default
        env["TRAIN_TIME_BUDGET_SECONDS"] = str(budget)
    cli = str(Path(sys.executable).with_name("readmission"))
    results = []
    try:
        for stage in args.stages:
            log = (args.work / f"{store}-x{factor}-{stage}.log").resolve()
            try:
                seconds, peak, output = run_stage([cli, stage], env, log, cwd=folder)
            except RuntimeError as exc:
                print(f"  {store:8} x{factor:<3} {stage:12} FAILED (log: {log}): {_error_line(str(exc))}", flush=True)
                break
            results.append(Stage(store, factor, stage, rows, seconds, peak, output))
            print(f"  {store:8} x{factor:<3} {stage:12} {seconds:8.1f} s  peak RSS {peak:7.0f} MB", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _error_line(failure: str) -> str:
    """The CLI's own error line of a failed stage's output (its last line starting with 'error'), else the last."""
    lines = [line.strip() for line in failure.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or ["(no output)"])[-1][:300]


def champion_line(output: str) -> str:
    """The train command's champion/promotion lines, condensed."""
    lines = [line.strip() for line in output.splitlines() if re.search(r"champion|promot", line)]
    return " | ".join(lines[-2:]) if lines else "(no champion line printed)"


def report(results: list[Stage]) -> None:
    """The per-stage table, the growth from the smallest to the largest factor, and each run's champion."""
    print(f"\n{'store':9} {'factor':>6} {'rows':>10} {'stage':12} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>11}")
    for r in results:
        print(f"{r.store:9} {r.factor:>5}x {r.rows:10,} {r.stage:12} {r.seconds:8.1f} {r.rows / r.seconds:9,.0f} "
              f"{r.peak_rss_mb:11,.0f}")  # fmt: skip
    factors = sorted({r.factor for r in results})
    if len(factors) > 1:
        low, high = factors[0], factors[-1]
        print(f"\ngrowth from {low}x to {high}x (linear: time grows at most as the rows do)")
        for store in sorted({r.store for r in results}):
            for stage in STAGES:
                small, large = (next((r for r in results if (r.store, r.stage, r.factor) == (store, stage, f)), None)
                                for f in (low, high))  # fmt: skip
                if small and large:
                    data, time_growth = large.rows / small.rows, large.seconds / small.seconds
                    verdict = "linear or better" if time_growth <= data * 1.1 else "SUPERLINEAR"
                    print(f"  {store:8} {stage:12} rows x{data:5.2f}  time x{time_growth:5.2f}  "
                          f"peak RSS x{large.peak_rss_mb / small.peak_rss_mb:4.2f}  {verdict}")  # fmt: skip
    if not results:
        print("\nno stage completed: see the FAILED lines above")
        return
    worst = max(results, key=lambda r: r.peak_rss_mb)
    verdict = "under" if worst.peak_rss_mb < PEAK_RSS_GOAL_GB * 1024 else "OVER"
    print(f"\nlargest peak RSS: {worst.peak_rss_mb:,.0f} MB ({worst.store} x{worst.factor} {worst.stage}), {verdict} "
          f"the {PEAK_RSS_GOAL_GB:g} GB goal")  # fmt: skip
    for r in results:
        if r.stage == "train":
            print(f"champion {r.store} x{r.factor}: {champion_line(r.output)}")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, with one line naming the option, what would fail only after minutes of loading."""
    if list(args.stages) != list(STAGES[: len(args.stages)]):
        parser.error(f"--stages must be a prefix of {' '.join(STAGES)} (each stage needs the one before)")
    if min(args.factors) < 1 or len(set(args.factors)) != len(args.factors):
        parser.error(f"--factors must be distinct whole numbers of at least 1, got {' '.join(map(str, args.factors))}")
    if "postgres" in getattr(args, "stores", ()) and (problem := _not_postgres(args.postgres_url)):
        parser.error(f"--postgres-url {problem} (or set BENCH_POSTGRES_URL), or pass --stores sqlite")
    if getattr(args, "budget", 1.0) <= 0:  # absent when not given (argparse.SUPPRESS)
        parser.error(f"--budget must be more than 0 seconds, got {args.budget:g}")
    if not args.data.is_file():
        parser.error(f"no data file at {args.data}: pass --data (or DATA_PATH) the UCI diabetic_data.csv")
    if args.data.suffix.lower() == ".zip":
        parser.error(f"{args.data} is a zip: pass --data the diabetic_data.csv inside it (unzip it first; after "
                     "`make run DATA_PATH=that zip` it is var/extracted/<zip name>-diabetic_data.csv)")  # fmt: skip


def _not_postgres(url: str) -> str:
    """'' for a PostgreSQL URL, else what is wrong with ``url`` (a phrase, without the URL's password)."""
    try:
        backend = make_url(normalize_url(url)).get_backend_name()  # postgres:// too, as the CLI takes it
    except ArgumentError:
        return "is not a database URL: give postgresql://USER@HOST:PORT/DATABASE"
    return "" if backend == "postgresql" else f"is a {backend} URL: give postgresql://USER@HOST:PORT/DATABASE"


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("DATA_PATH", "var/uci/diabetic_data.csv")),
        help="the UCI diabetic_data.csv, not the zip (env DATA_PATH; the default is where `make run` keeps it)",
    )
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 3, 10], help="sizes, in copies of the file")
    parser.add_argument(
        "--stores", nargs="+", choices=("postgres", "sqlite"), default=["postgres", "sqlite"], help="where to run"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL whose user may create databases, for --stores postgres (env BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=argparse.SUPPRESS,
        help="TRAIN_TIME_BUDGET_SECONDS, a target the job runs past on small or busy runs (default: the CLI's, 240)",
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="a prefix of the stages")
    parser.epilog = "Peak RSS is each `readmission` process's own; PostgreSQL's server processes are not counted."
    parser.add_argument("--work", type=Path, default=Path("var/bench-scale"), help="data sets and run folders")
    args = parser.parse_args()
    check_args(parser, args)
    if "postgres" in args.stores and (problem := Stores(args.postgres_url).unreachable()):
        parser.error(f"{problem}; pass --postgres-url (or BENCH_POSTGRES_URL), or --stores sqlite")
    args.work.mkdir(parents=True, exist_ok=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    stores = Stores(args.postgres_url)
    results: list[Stage] = []
    try:
        for factor in args.factors:
            data, rows = data_file(args.data, args.work, factor)
            print(f"== {factor}x: {rows:,} encounters ({data})", flush=True)
            for store in args.stores:
                results += run_pipeline(store, factor, data, rows, stores, args)
    finally:
        stores.drop_all()
    report(results)


if __name__ == "__main__":
    main()
