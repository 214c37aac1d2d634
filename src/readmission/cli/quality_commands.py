"""`readmission evaluate`: an honest estimate of model quality over several patient-grouped splits.

Nothing is tracked or registered: this measures what the default training achieves on this data, with the
test splits choosing nothing (``readmission.assessment``; the protocol is in the README, "Model quality,
measured on several splits"). pandas and scikit-learn load inside the command.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from readmission.errors import ReadmissionError

from .model_commands import training_config

if TYPE_CHECKING:
    from readmission.assessment import SplitResult

    from .settings import Settings

PANEL = "Models: MLflow registry and the champion gate"
DEFAULT_SEEDS = "1,2,3,4,5"  # readmission.assessment.EVALUATION_SEEDS (not imported here: it loads scikit-learn)
RECOMMENDED_SEEDS = 5
_LARGEST_SEED = 2**63 - 1  # clean.assign_split draws from the seed as a 64-bit integer
_TUNED_ON = 42  # the default split seed, on which earlier feature and family choices were made


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``.

    Raises ``ReadmissionError`` naming ``--seeds`` unless there are two or more distinct whole numbers in
    0 .. 2**63 - 1 (a sample standard deviation needs two; a repeated seed would count one split twice).
    """
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ReadmissionError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 1,2,3,4,5") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or not all(0 <= s <= _LARGEST_SEED for s in seeds):
        raise ReadmissionError(
            f"--seeds {text!r}: give at least two different split seeds from 0 to 2**63 - 1 (a mean +- sd needs "
            "two), e.g. 1,2,3,4,5"
        )
    return seeds


def seed_warnings(seeds: tuple[int, ...]) -> list[str]:
    """What weakens an estimate from ``seeds``: fewer than five splits, or the split earlier choices were made on."""
    warnings = []
    if len(seeds) < RECOMMENDED_SEEDS:
        warnings.append(f"only {len(seeds)} splits: the sd of so few is itself uncertain; use 5 or more")
    if _TUNED_ON in seeds:
        warnings.append(f"seed {_TUNED_ON} is the split earlier choices were made on: its score flatters the model")
    return warnings


def _json_ready(value: Any) -> Any:
    """NaN (an undefined metric) as JSON null: ``json`` would write the non-standard token NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def check_writable(path: Path) -> None:
    """``ReadmissionError`` naming ``--json`` unless ``path`` can be written: checked before a long run, not
    after it (a folder, a missing parent or a read-only place would lose the run's results)."""
    if path.is_dir():
        raise ReadmissionError(f"--json {path}: is a folder; give a file name, e.g. {path / 'evaluation.json'}")
    if not path.parent.is_dir():
        raise ReadmissionError(f"--json {path}: the folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ReadmissionError(f"--json {path}: not writable; choose another place")


def write_results(path: Path, results: list[SplitResult]) -> None:
    """Every result as a JSON list of objects (the fields of ``SplitResult``), NaN as null.

    Raises ``ReadmissionError`` when the file cannot be written."""
    try:
        path.write_text(json.dumps([_json_ready(asdict(r)) for r in results], indent=1, allow_nan=False))
    except OSError as exc:
        raise ReadmissionError(f"--json {path}: cannot write it: {exc.strerror}") from None


def _print_results(out: Console, results: list[SplitResult], seeds: tuple[int, ...], seconds: float) -> None:
    from readmission.assessment import format_per_seed, format_summary, summary

    table = summary(results)
    out.print("per seed:", highlight=False)
    out.print(format_per_seed(results), highlight=False)
    out.print(f"\nmean +- sd over seeds {', '.join(map(str, seeds))} (test splits)", highlight=False)
    out.print(format_summary(table), highlight=False)
    out.print(
        f"evaluate: champion test ROC-AUC <30 {table.loc['champion', 'roc_auc_30_mean']:.4f} +- "
        f"{table.loc['champion', 'roc_auc_30_sd']:.4f} over {len(seeds)} patient-grouped splits ({seconds:.0f} s)",
        highlight=False,
    )


def run_evaluation(
    settings: Settings, seeds: tuple[int, ...], json_path: Path | None, out: Console, log: Console
) -> None:
    """Evaluate the configured training on each seed's split of RAW and print the tables and a summary line.

    Raises ``ReadmissionError`` (one line, with the fix) for a bad setting, an empty RAW store, too little data
    for a split, or a JSON file that cannot be written."""
    from readmission.assessment import evaluate_seeds
    from readmission.clean import SplitSpec, read_raw
    from readmission.db import create_db_engine

    config = training_config(settings)
    split = SplitSpec(validation=settings.validation_fraction, test=settings.test_fraction)
    for warning in seed_warnings(seeds):
        log.print(f"evaluate: note: {warning}", highlight=False)
    started = time.perf_counter()
    raw = read_raw(create_db_engine(settings.raw_url))
    trials = f"at most {config.max_trials} trial(s)" if config.max_trials else "trials as time allows"
    log.print(
        f"evaluate: {len(raw):,} RAW rows, seeds {', '.join(map(str, seeds))}; training as `readmission train` "
        f"would run it: {', '.join(config.families)}, budget {config.time_budget_seconds:.0f} s per seed, {trials}",
        highlight=False,
    )
    try:
        results = evaluate_seeds(raw, seeds, config, split, log=lambda line: log.print(line, highlight=False))
    except ValueError as exc:  # scikit-learn refusing a split: too few rows or too few readmissions in it
        raise ReadmissionError(
            f"evaluation stopped ({exc}). With {len(raw):,} RAW rows a split may hold too few 30-day readmissions: "
            "load more rows (`readmission load-raw`)"
        ) from None
    if json_path is not None:
        write_results(json_path, results)
    _print_results(out, results, seeds, time.perf_counter() - started)


def register_quality_commands(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    """Add `evaluate` to ``app``."""

    @app.command(rich_help_panel=PANEL)
    def evaluate(
        seeds: Annotated[
            str, typer.Option(help="Split seeds, comma-separated (five or more advised).")
        ] = DEFAULT_SEEDS,
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Also write every seed's results to this JSON file.")
        ] = None,
    ) -> None:
        """Honest model quality: the training (TRAIN_* settings, as `train` runs it) on each seed's
        patient-grouped split of RAW, then every family's and the champion's test metrics as mean +- sd.
        Registers nothing; about 90 s per seed on the full data on 2 cores."""
        chosen = parse_seeds(seeds)
        if json_path is not None:
            check_writable(json_path)
        run_evaluation(settings_factory(), chosen, json_path, out, console)
