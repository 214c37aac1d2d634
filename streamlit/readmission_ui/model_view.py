"""The Model tab's tables and chart, from the API's answers (GET /model, /model/versions, /model/importance).

Pure functions of the answers, so they are tested without a page: every value is written out as text (nothing
for a table cell to cut), each metric under its human name with its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

from readmission_ui.client import ApiProblem
from readmission_ui.model_labels import RUN_FIGURES, SPLIT_METRICS, SPLITS, MetricLabel, feature_label

# The plots the tab shows, in this order, by the API's names, with their captions.
PLOTS: dict[str, str] = {
    "roc": "ROC curve (test split)",
    "precision-recall": "Precision-recall curve (test split)",
    "reliability": "Reliability: predicted against observed 30-day rate (test split)",
}
TOP_FEATURES = 20
HISTORY_ROWS = 25  # the latest versions the history table lists
IMPORTANCE_COLOUR = "#1565c0"


def split_metrics_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """The per-split metrics, validation and test side by side: columns Metric, Validation, Test, Meaning (one
    row per metric either split logged, in ``SPLIT_METRICS`` order; a metric without a label under its key)."""
    keys = {key.partition("_")[2] for key in metrics if key.partition("_")[0] in SPLITS}
    known = [k for k in SPLIT_METRICS if k in keys]
    unknown = sorted(keys - set(SPLIT_METRICS))
    rows = []
    for key in [*known, *unknown]:
        label = SPLIT_METRICS.get(key, MetricLabel(key, ""))
        row = {"Metric": label.name}
        row |= {split.capitalize(): label.format(metrics.get(f"{split}_{key}")) for split in SPLITS}
        rows.append({**row, "Meaning": label.meaning})
    return pd.DataFrame(rows, columns=["Metric", *(s.capitalize() for s in SPLITS), "Meaning"])


def run_figures_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """The figures that belong to neither split (threshold, fit time, any other key): Figure, Value, Meaning."""
    rows = []
    for key, value in metrics.items():
        if key.partition("_")[0] in SPLITS and key.partition("_")[2]:
            continue
        label = RUN_FIGURES.get(key, MetricLabel(key, ""))
        rows.append({"Figure": label.name, "Value": label.format(value), "Meaning": label.meaning})
    order = {label.name: i for i, label in enumerate(RUN_FIGURES.values())}
    rows.sort(key=lambda row: (order.get(row["Figure"], len(order)), row["Figure"]))
    return pd.DataFrame(rows, columns=["Figure", "Value", "Meaning"])


def headline(metrics: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """The test split's headline figures as (label, value, meaning), short enough never to be cut."""
    picked = (("ROC-AUC (test)", "roc_auc_30"), ("Average precision (test)", "average_precision_30"))
    return [
        (title, SPLIT_METRICS[key].format(metrics[f"test_{key}"]), SPLIT_METRICS[key].meaning)
        for title, key in picked
        if f"test_{key}" in metrics
    ]


def _decision(version: Mapping[str, Any]) -> str:
    if version.get("decision"):
        return str(version["decision"])
    return "not gated yet" if not version.get("reason") else "gate did not finish"


def history_table(versions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per registered version, newest first: Version, Registered (UTC), Aliases, Family, Decision, Reason,
    Test ROC-AUC (the gate's score of the version), Note (served here, rollback)."""
    rows = []
    for v in versions:
        notes = ["served here"] if v.get("serving") else []
        if v.get("rollback_reason"):
            notes.append(f"rollback: {v['rollback_reason']}")
        score = v.get("candidate_score")
        rows.append(
            {
                "Version": f"v{v['version']}",
                "Registered (UTC)": pd.Timestamp(v["created_at"]).strftime("%Y-%m-%d %H:%M"),
                "Aliases": ", ".join(v.get("aliases") or []) or "–",
                "Family": str(v.get("family") or "–").replace("_", " "),
                "Decision": _decision(v),
                "Reason": v.get("reason") or "–",
                "Test ROC-AUC": "–" if score is None else f"{score:.4f}",
                "Note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


HISTORY_COLUMNS = ("Version", "Registered (UTC)", "Aliases", "Family", "Decision", "Reason", "Test ROC-AUC", "Note")


def importance_rows(features: Sequence[Mapping[str, Any]], top: int = TOP_FEATURES) -> pd.DataFrame:
    """The ``top`` most important inputs, largest first: feature (in words), name (the contract's), importance."""
    ranked = sorted(features, key=lambda f: float(f["importance"]), reverse=True)[:top]
    return pd.DataFrame(
        {
            "feature": [feature_label(str(f["feature"])) for f in ranked],
            "name": [str(f["feature"]) for f in ranked],
            "importance": [float(f["importance"]) for f in ranked],
        }
    )


def importance_chart(features: Sequence[Mapping[str, Any]], measure: str, top: int = TOP_FEATURES) -> alt.Chart:
    """Horizontal bars of the ``top`` most important inputs, largest at the top, each named in words."""
    rows = importance_rows(features, top)
    chart: alt.Chart = (
        alt.Chart(rows, height=max(120, 24 * len(rows)))
        .mark_bar(color=IMPORTANCE_COLOUR)
        .encode(
            x=alt.X("importance:Q", title=measure[:1].upper() + measure[1:]),
            y=alt.Y("feature:N", title=None, sort=list(rows["feature"]), axis=alt.Axis(labelLimit=0)),
            tooltip=[
                alt.Tooltip("feature:N"),
                alt.Tooltip("name:N", title="contract name"),
                alt.Tooltip("importance:Q", format=".4f"),
            ],
        )
    )
    return chart


def same_run(answer: dict[str, Any], run_id: str) -> dict[str, Any]:
    """``answer`` if it is about ``run_id``, else ``ApiProblem``: the API answers for the version serving at the
    moment of the call, so a swap between ``GET /model`` and this call must not cache the new run's figures
    under the old run's id."""
    if answer.get("run_id") != run_id:
        raise ApiProblem("the served model changed while the page was loading it: reload the page")
    return answer
