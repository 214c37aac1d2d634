"""An honest estimate of model quality: the default training on several patient-grouped splits.

Loads the file into a scratch RAW store as the pipeline does, then for each seed rebuilds the CLEAN frame
with that split seed, trains every family with the default time budget, picks the champion on validation
and scores on that seed's test split (``readmission.assessment``). Prints per seed, then mean +- sd:

    python bench/model.py --data ../shared/data/diabetic_data.csv [--seeds 1,2,3,4,5] [--families ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from readmission.assessment import EVALUATION_SEEDS, evaluate_seeds, format_per_seed, format_summary, summary
from readmission.clean import read_raw
from readmission.cli.quality_commands import check_writable, parse_seeds, seed_warnings, write_results
from readmission.db import create_db_engine
from readmission.errors import ReadmissionError
from readmission.modeling import FAMILIES
from readmission.raw import SourceFile, load_raw_batches
from readmission.training import TrainConfig


def main() -> None:
    """Evaluate the default training on each seed's split and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("DATA_PATH", "../shared/data/diabetic_data.csv")),
        help="the UCI file (default: $DATA_PATH, else ../shared/data/diabetic_data.csv)",
    )
    parser.add_argument("--seeds", default=",".join(map(str, EVALUATION_SEEDS)), help="split seeds, comma-separated")
    parser.add_argument("--families", default=",".join(FAMILIES), help="model families, comma-separated")
    parser.add_argument("--budget", type=float, default=240.0, help="training budget, s (TRAIN_TIME_BUDGET_SECONDS)")
    parser.add_argument("--max-trials", type=int, default=None, help="trials per family (default: as time allows)")
    parser.add_argument("--json", type=Path, default=None, help="also write every result to this file")
    args = parser.parse_args()
    try:
        args.seeds = parse_seeds(args.seeds)
        if args.json:
            check_writable(args.json)
        config = TrainConfig(
            families=tuple(f for f in args.families.split(",") if f),
            time_budget_seconds=args.budget,
            max_trials=args.max_trials,
        )
    except (ReadmissionError, ValueError) as exc:
        parser.error(str(exc))
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file (the UCI diabetic_data.csv, or a .zip of it)")
    for warning in seed_warnings(args.seeds):
        print(f"note: {warning}")

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'raw.db'}")
        load_raw_batches(engine, SourceFile.read(args.data))
        raw = read_raw(engine)
    started = time.perf_counter()
    results = evaluate_seeds(raw, args.seeds, config, log=lambda line: print(line, flush=True))
    print(f"\nper seed:\n{format_per_seed(results)}")
    print(f"\nmean +- sd over seeds {', '.join(map(str, args.seeds))} (test splits; champion chosen on validation):")
    print(format_summary(summary(results)))
    print(
        f"\n{len(args.seeds)} seeds in {time.perf_counter() - started:.0f} s; training budget {config.time_budget_seconds:.0f} s per seed"
    )
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    main()
