"""`readmission evaluate`: an honest estimate of model quality over several patient-grouped splits.

Nothing is tracked or registered: this measures what the default training achieves on this data, with the
test splits choosing nothing (``readmission.assessment``). pandas and scikit-learn load inside the command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from readmission.errors import ReadmissionError

if TYPE_CHECKING:
    from .settings import Settings

PANEL = "Models: MLflow registry and the champion gate"
DEFAULT_SEEDS = "1,2,3,4,5"  # readmission.assessment.EVALUATION_SEEDS (not imported here: it loads scikit-learn)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; ``ReadmissionError`` naming ``--seeds`` unless 2+ distinct integers >= 0."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ReadmissionError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 1,2,3,4,5") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ReadmissionError(
            f"--seeds {text!r}: give at least two different split seeds >= 0 (a mean +- sd needs two), e.g. 1,2,3,4,5"
        )
    return seeds


def register_quality_commands(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    """Add `evaluate` to ``app``."""

    @app.command(rich_help_panel=PANEL)
    def evaluate(
        seeds: Annotated[str, typer.Option(help="Split seeds, comma-separated (at least two).")] = DEFAULT_SEEDS,
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Also write every seed's results to this JSON file.")
        ] = None,
    ) -> None:
        """Honest model quality: the default training on each seed's patient-grouped split of RAW, then every
        family's and the champion's test metrics as mean +- sd. Registers nothing; takes about the training
        budget per seed."""
        chosen = parse_seeds(seeds)
        settings = settings_factory()
        from readmission.assessment import evaluate_seeds, format_per_seed, format_summary, summary
        from readmission.clean import read_raw
        from readmission.db import create_db_engine
        from readmission.training import TrainConfig

        config = TrainConfig(
            families=settings.families,
            time_budget_seconds=settings.train_time_budget_seconds,
            max_trials=settings.train_max_trials,
            seed=settings.train_seed,
        )
        started = time.perf_counter()
        raw = read_raw(create_db_engine(settings.raw_url))
        console.print(f"evaluate: {len(raw):,} RAW rows, seeds {', '.join(map(str, chosen))}", highlight=False)
        results = evaluate_seeds(raw, chosen, config, log=lambda line: console.print(line, highlight=False))
        out.print(
            "per seed: test metrics; the validation ROC-AUC (val AUC) alone chooses the champion", highlight=False
        )
        out.print(format_per_seed(results), highlight=False)
        out.print(f"\nmean +- sd over seeds {', '.join(map(str, chosen))} (test splits)", highlight=False)
        out.print(format_summary(summary(results)), highlight=False)
        if json_path is not None:
            json_path.write_text(json.dumps([asdict(r) for r in results], indent=1))
        champion = summary(results).loc["champion"]
        out.print(
            f"evaluate: champion test ROC-AUC <30 {champion['roc_auc_30_mean']:.4f} +- {champion['roc_auc_30_sd']:.4f} "
            f"over {len(chosen)} patient-grouped splits ({time.perf_counter() - started:.0f} s)",
            highlight=False,
        )
