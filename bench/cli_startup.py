"""How long `readmission` takes to answer, the code of this checkout beside an earlier one, in one run:

    git worktree add /tmp/before <commit>      # e.g. the commit before the lazy imports
    python bench/cli_startup.py --baseline /tmp/before --runs 7

Each command runs ``--runs`` times in turn (baseline, then this checkout, alternating, so both see the same
machine load) in a scratch folder with an empty embedded store; prints the median seconds of each and the
ratio. ``models`` creates the local MLflow store on its first run, which is left out of the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = (("--help",), ("status",), ("models",))


def _seconds(source: Path, args: tuple[str, ...], folder: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "COLUMNS": "120"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "readmission.cli.app", *args], cwd=folder, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{source}: readmission {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    """Parse the options, time both checkouts, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout (git worktree) to compare with")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sources = {"this checkout": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    print(f"readmission start-up, median of {args.runs} runs (s); python {sys.version.split()[0]}")
    print(
        f"{'command':<10}"
        + "".join(f"{name:>16}" for name in reversed(sources))
        + ("   ratio" if args.baseline else "")
    )
    for command in COMMANDS:
        times: dict[str, list[float]] = {name: [] for name in sources}
        with tempfile.TemporaryDirectory() as scratch:
            for name, source in sources.items():  # warm-up: creates the stores, fills the OS cache
                os.makedirs(Path(scratch) / name, exist_ok=True)
                _seconds(source, command, Path(scratch) / name)
            for _ in range(args.runs):
                for name, source in reversed(list(sources.items())):
                    times[name].append(_seconds(source, command, Path(scratch) / name))
        medians = {name: statistics.median(t) for name, t in times.items()}
        row = f"{' '.join(command):<10}" + "".join(f"{medians[name]:>16.2f}" for name in reversed(sources))
        if args.baseline:
            row += f"   {medians['baseline'] / medians['this checkout']:.1f}x faster"
        print(row)


if __name__ == "__main__":
    main()
