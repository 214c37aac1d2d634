"""An honest estimate of model quality: the default training repeated on several patient-grouped splits.

One split gives one draw of the test set's noise (an sd of about 0.006 ROC-AUC between splits of 15,000 encounters here), and a
split whose seed was used while choosing features and families flatters the choice. ``evaluate_seeds``
re-splits the same RAW rows with each seed (``clean.clean_frame``: cohort, history features and split exactly
as CLEAN builds them), runs every family with the share of the time budget ``steps.train_job`` gives it, picks
the champion on validation ROC-AUC alone (``steps.best_on_validation``'s rule) and scores everything on that
seed's test split. The test splits choose nothing.

The protocol (cohort, target, split, seeds) is written once, in the README: "Model quality, measured on
several splits".
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from readmission import schema
from readmission.clean import SplitSpec, clean_frame
from readmission.evaluation import classification_metrics, risk_of
from readmission.modeling import model_input
from readmission.names import SELECTION_METRIC
from readmission.training import TrainConfig, fit_family

EVALUATION_SEEDS: tuple[int, ...] = (1, 2, 3, 4, 5)
CHAMPION = "champion"
REPORTED_METRICS: dict[str, str] = {
    "roc_auc_30": "ROC-AUC <30",
    "average_precision_30": "avg precision <30",
    "brier_skill_30": "Brier skill",
    "calibration_slope_30": "calibration slope",
}


@dataclass(frozen=True)
class SplitResult:
    """One family (or the champion chosen among them) on one seed's split."""

    seed: int
    family: str
    validation: dict[str, float]
    test: dict[str, float]
    fit_seconds: float  # the family's trials, refit and test scoring; a champion row: its family's
    trials: int
    calibrated: bool
    refit: bool = False  # fitted again on train + validation (``training.fit_family``)
    chosen_family: str = field(default="")  # for the champion row: the family validation chose


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return model_input(frame), frame[schema.TARGET].astype(str)


def evaluate_split(
    raw: pd.DataFrame,
    seed: int,
    config: TrainConfig,
    split: SplitSpec = SplitSpec(),  # noqa: B008 - frozen dataclass, only its fractions are read
    log: Callable[[str], None] = print,
) -> list[SplitResult]:
    """Every family of ``config`` and the champion on the split of ``raw`` drawn with ``seed`` (and the
    fractions of ``split``; its own seed is ignored).

    ``raw`` holds RAW rows (contract columns as text and integers, as ``clean.read_raw`` returns them).
    Returns one ``SplitResult`` per family, then one with ``family == "champion"``. Raises ``ValueError`` (from
    scikit-learn's metrics) when a split holds no 30-day readmission, as on a tiny data set.
    """
    from readmission.steps import trial_share

    frame = clean_frame(raw, replace(split, seed=seed))
    parts = {s: _xy(frame[frame["split"] == s]) for s in ("train", "validation", "test")}
    share = trial_share(config.time_budget_seconds, len(config.families))
    results = []
    for family in config.families:
        started = time.perf_counter()
        candidate = fit_family(family, parts["train"], parts["validation"], config, share, lambda _line: None)
        test = classification_metrics(parts["test"][1], *risk_of(candidate.model, parts["test"][0]))
        seconds = time.perf_counter() - started
        results.append(
            SplitResult(
                seed,
                family,
                candidate.validation,
                test,
                seconds,
                candidate.trials,
                candidate.calibrated,
                candidate.refit,
            )
        )
        log(
            f"  seed {seed} {family}: validation {candidate.validation[SELECTION_METRIC]:.4f}, "
            f"test {test[SELECTION_METRIC]:.4f} ({candidate.trials} trial(s), {seconds:.0f} s)"
        )
    best = max(results, key=lambda r: r.validation[SELECTION_METRIC])
    results.append(replace(best, family=CHAMPION, chosen_family=best.family))
    return results


def evaluate_seeds(
    raw: pd.DataFrame,
    seeds: Iterable[int],
    config: TrainConfig,
    split: SplitSpec = SplitSpec(),  # noqa: B008 - frozen dataclass
    log: Callable[[str], None] = print,
) -> list[SplitResult]:
    """``evaluate_split`` for each seed in turn (one split in memory at a time)."""
    results: list[SplitResult] = []
    for seed in seeds:
        results.extend(evaluate_split(raw, seed, config, split, log))
    return results


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1). The sd of one value is undefined: NaN (the mean too for
    none). Over overlapping splits of one data set the sd says how much one split's score varies; it is not
    the standard error of the mean."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summary(results: Sequence[SplitResult]) -> pd.DataFrame:
    """Test metrics as mean and sd over seeds: one row per family (champion last), columns
    ``<metric>_mean`` / ``<metric>_sd`` for each of ``REPORTED_METRICS`` plus ``seeds`` and ``fit_seconds_mean``."""
    rows = []
    families = [*dict.fromkeys(r.family for r in results if r.family != CHAMPION), CHAMPION]
    for family in families:
        mine = [r for r in results if r.family == family]
        row: dict[str, object] = {"family": family, "seeds": len(mine)}
        for metric in REPORTED_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([r.test[metric] for r in mine])
        row["fit_seconds_mean"] = mean_sd([r.fit_seconds for r in mine])[0]
        rows.append(row)
    return pd.DataFrame(rows).set_index("family")


def per_seed_table(results: Sequence[SplitResult]) -> pd.DataFrame:
    """One row per (seed, family): validation ROC-AUC, each test metric, trials, seconds, chosen family."""
    return pd.DataFrame(
        [
            {
                "seed": r.seed,
                "family": r.family,
                "validation_roc_auc_30": r.validation[SELECTION_METRIC],
                **{f"test_{m}": r.test[m] for m in REPORTED_METRICS},
                "trials": r.trials,
                "calibrated": r.calibrated,
                "refit": r.refit,
                "fit_seconds": r.fit_seconds,
                "chosen": r.chosen_family,
            }
            for r in results
        ]
    )


def format_summary(table: pd.DataFrame) -> str:
    """``summary`` as aligned text: ``mean +- sd`` per metric, the champion row last."""
    header = f"{'family':<24} {'seeds':>5} " + " ".join(f"{h:>20}" for h in REPORTED_METRICS.values()) + "  fit s"
    lines = [header]
    for family, row in table.iterrows():
        cells = " ".join(f"{row[f'{m}_mean']:>10.4f} +- {row[f'{m}_sd']:.4f}" for m in REPORTED_METRICS)
        lines.append(f"{family!s:<24} {int(row['seeds']):>5} {cells} {row['fit_seconds_mean']:6.0f}")
    return "\n".join(lines)


def format_per_seed(results: Sequence[SplitResult]) -> str:
    """``per_seed_table`` as aligned text (champion rows name the family validation chose; the last column says
    whether the model kept was refitted on train + validation, recalibrated on validation, or fitted on train)."""
    lines = [
        f"{'seed':>5} {'family':<36} {'val AUC':>8} "
        + " ".join(f"{h:>18}" for h in REPORTED_METRICS.values())
        + "  model"
    ]
    for r in results:
        name = f"{CHAMPION} ({r.chosen_family})" if r.family == CHAMPION else r.family
        cells = " ".join(f"{r.test[m]:>18.4f}" for m in REPORTED_METRICS)
        kind = "recalibrated" if r.calibrated else "refit" if r.refit else "train only"
        lines.append(f"{r.seed:>5} {name:<36} {r.validation[SELECTION_METRIC]:>8.4f} {cells}  {kind}")
    return "\n".join([*lines, *PER_SEED_LEGEND])


PER_SEED_LEGEND = (
    "val AUC: validation ROC-AUC <30 of the trial fitted on train, uncalibrated: it alone chooses the champion,",
    "  the family re-listed as `champion (...)`. The other columns: test split, the model kept (`model`: refit =",
    "  fitted again on train + validation, recalibrated = sigmoid calibration fitted on validation, not refitted).",
)
