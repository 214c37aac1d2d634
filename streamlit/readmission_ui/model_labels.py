"""What the Model tab calls each metric training logs, and how it writes the value.

Training logs every metric of ``readmission.evaluation.classification_metrics`` twice, as ``validation_<key>`` and
``test_<key>``, plus a few figures of the run itself (``RUN_FIGURES``). Each has a human name and a one-line
meaning here; a key with none is shown under its raw name (and a test fails: every logged key must have one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from readmission import schema
from readmission_ui.labels import field_label, flag_label, is_flag

SPLITS = ("validation", "test")  # the prefixes of the per-split metrics, in the order the table shows them


@dataclass(frozen=True)
class MetricLabel:
    """A metric's name, its meaning in one line, and how its value is written (``kind``: score, percent, seconds, count)."""

    name: str
    meaning: str
    kind: str = "score"

    def format(self, value: float | None) -> str:
        """The value as the table shows it (whole: never cut); an en dash when it is missing or not a number."""
        if value is None or not math.isfinite(value):
            return "–"
        if self.kind == "percent":
            return f"{value:.1%}"
        if self.kind == "seconds":
            return f"{value:,.1f} s"
        if self.kind == "count":
            return f"{value:,.0f}"
        return f"{value:.4f}"


# The per-split metrics (after the validation_/test_ prefix), in the order the table lists them.
SPLIT_METRICS: dict[str, MetricLabel] = {
    "roc_auc_30": MetricLabel(
        "ROC-AUC (30-day)",
        "Chance that an encounter readmitted within 30 days gets a higher risk than one that was not (0.5 = chance, "
        "1 = perfect).",
    ),
    "average_precision_30": MetricLabel(
        "Average precision (30-day)",
        "Area under the precision-recall curve of the 30-day risk; a random ranking scores the prevalence.",
    ),
    "brier_skill_30": MetricLabel(
        "Brier skill (30-day)",
        "How much better the risks are than always predicting the prevalence (0 = no better, 1 = perfect).",
    ),
    "brier_30": MetricLabel(
        "Brier score (30-day)", "Mean squared difference between the 30-day risk and what happened (lower is better)."
    ),
    "calibration_slope_30": MetricLabel(
        "Calibration slope (30-day)",
        "Slope of the recalibration line on the log-odds scale: 1 = well calibrated, below 1 = risks too extreme.",
    ),
    "calibration_intercept_30": MetricLabel(
        "Calibration intercept (30-day)",
        "Intercept of that line: 0 (with a slope of 1) = well calibrated; positive = risks too low overall.",
    ),
    "roc_auc_ovr_macro": MetricLabel(
        "ROC-AUC, three outcomes",
        "ROC-AUC of each outcome (within 30 days, after 30 days, none) against the other two, averaged.",
    ),
    "log_loss": MetricLabel(
        "Log loss, three outcomes", "Penalty for the probability given to what happened (lower is better)."
    ),
    "prevalence_30": MetricLabel(
        "Prevalence (30-day)", "Share of the split's encounters readmitted within 30 days.", "percent"
    ),
}

# Figures of the run itself, logged once (no split).
RUN_FIGURES: dict[str, MetricLabel] = {
    "chosen_threshold_30": MetricLabel(
        "Decision threshold (30-day)",
        "Risk at or above which the model's 30-day class is counted (the best F1 on validation).",
        "percent",
    ),
    "fit_seconds": MetricLabel("Fit time", "Seconds the final fit of this model took.", "seconds"),
    "fit_rows": MetricLabel(
        "Rows fitted",
        "Encounters the model was fitted on: train, or train + validation when refitted (a recalibrated model's "
        "calibrator is fitted on validation on top; a patient sample of them above TRAIN_MAX_FIT_ROWS).",
        "count",
    ),
}


def metric_label(key: str) -> MetricLabel | None:
    """The label of a logged metric key (``test_roc_auc_30``, ``fit_seconds``); None when it has none."""
    split, _, rest = key.partition("_")
    if split in SPLITS and rest in SPLIT_METRICS:
        return SPLIT_METRICS[rest]
    return RUN_FIGURES.get(key)


_FIELDS: dict[str, schema.Column | schema.HistoryFeature] = {c.name: c for c in schema.COLUMNS} | {
    h.name: h for h in schema.HISTORY_FEATURES
}


def feature_label(name: str) -> str:
    """A model input in words, as the Predict form calls it (its name when the contract does not know it)."""
    field = _FIELDS.get(name)
    if field is None:
        return name
    return flag_label(field) if is_flag(field) else field_label(field)
