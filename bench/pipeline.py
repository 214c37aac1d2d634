"""The whole job on the embedded default, stage by stage: fetch (local file), load RAW, build CLEAN,
train every candidate, register and gate. Prints seconds, each stage's share, and the total against the
5-minute target, all from one run:

    python bench/pipeline.py --data ../shared/data/diabetic_data.csv
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from readmission.clean import SplitSpec, build_clean
from readmission.db import create_db_engine
from readmission.raw import SourceFile, load_raw_batches
from readmission.source import resolve_dataset
from readmission.steps import train_job
from readmission.training import TrainConfig

TARGET_SECONDS = 300.0


def main() -> None:
    """Run the pipeline once in a scratch folder and print the per-stage table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("DATA_PATH", "../shared/data/diabetic_data.csv"))
    )
    parser.add_argument("--budget", type=float, default=240.0, help="training time budget (TRAIN_TIME_BUDGET_SECONDS)")
    args = parser.parse_args()

    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = create_db_engine(f"sqlite:///{folder / 'raw.db'}")
        clean = create_db_engine(f"sqlite:///{folder / 'clean.db'}")

        started = time.perf_counter()
        dataset = resolve_dataset(folder, args.data)
        stages["fetch (local file, checksum)"] = time.perf_counter() - started

        started = time.perf_counter()
        load = load_raw_batches(raw, SourceFile.read(dataset.path))
        stages[f"load RAW ({load.rows_loaded:,} rows, {len(load.loaded)} batches)"] = time.perf_counter() - started

        started = time.perf_counter()
        built = build_clean(raw, clean, SplitSpec())
        stages[f"build CLEAN ({built.clean_rows:,} rows)"] = time.perf_counter() - started

        started = time.perf_counter()
        job = train_job(
            str(clean.url),
            f"sqlite:///{folder / 'mlflow.db'}",
            TrainConfig(time_budget_seconds=args.budget),
            artifact_location=(folder / "artifacts").as_uri(),
            log=lambda line: print(line, flush=True),
        )
        stages["train all candidates, log, register, gate"] = time.perf_counter() - started

    total = sum(stages.values())
    print(f"\n{'stage':<48} {'seconds':>8} {'share':>7}")
    for name, seconds in stages.items():
        print(f"{name:<48} {seconds:8.1f} {seconds / total:6.1%}")
    print(f"{'total':<48} {total:8.1f} {total / TARGET_SECONDS:6.2f}x of the {TARGET_SECONDS:.0f} s target")

    print(
        f"\ncandidates (test split, patient-grouped, seed 42); champion: v{job['promotion']['champion_version']} {job['best']['family']}"
    )
    metrics = (
        "roc_auc_30",
        "roc_auc_ovr_macro",
        "average_precision_30",
        "brier_skill_30",
        "calibration_slope_30",
        "log_loss",
    )
    print(f"{'family':<24} {'val auc30':>9} " + " ".join(f"{m:>20}" for m in metrics))
    for c in job["candidates"]:
        print(
            f"{c['family']:<24} {c['validation']['roc_auc_30']:9.4f} "
            + " ".join(f"{c['test'][m]:20.4f}" for m in metrics)
        )


if __name__ == "__main__":
    main()
