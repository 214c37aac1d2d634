"""The Model tab's tables and chart: every metric training logs has a human name and a one-line meaning,
validation and test side by side with no empty cell, every value written out whole; the version history with the
gate's decisions; the feature importance as horizontal bars, largest at the top, named in words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from readmission import schema
from readmission.evaluation import classification_metrics
from readmission.names import EXPERIMENT_NAME
from readmission_ui import model_view
from readmission_ui.client import ApiProblem
from readmission_ui.model_labels import RUN_FIGURES, SPLIT_METRICS, feature_label, metric_label
from readmission_ui.model_view import (
    HISTORY_COLUMNS,
    TOP_FEATURES,
    headline,
    history_table,
    importance_chart,
    importance_rows,
    run_figures_table,
    split_metrics_table,
)

METRICS = {
    "validation_roc_auc_30": 0.671234,
    "test_roc_auc_30": 0.66,
    "validation_prevalence_30": 0.1123,
    "test_prevalence_30": 0.1149,
    "test_calibration_intercept_30": -0.0123456,
    "chosen_threshold_30": 0.1375,
    "fit_seconds": 1234.56,
    "fit_rows": 89654.0,
}


def _logged_keys(registry_uri: str) -> set[str]:
    """Every metric key of every run training logged (the candidates and the registered winner)."""
    client = MlflowClient(tracking_uri=registry_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert runs, "the training job logged no run"
    return {key for run in runs for key in run.data.metrics}


def test_every_metric_key_training_logs_has_a_name_and_a_meaning(registry_uri: str) -> None:
    """Fails when training starts logging a metric the page has no words for."""
    keys = _logged_keys(registry_uri)
    assert {"test_roc_auc_30", "validation_roc_auc_30", "chosen_threshold_30"} <= keys
    unnamed = sorted(key for key in keys if metric_label(key) is None)
    assert not unnamed, f"metrics without a name on the Model tab (readmission_ui/model_labels.py): {unnamed}"
    for key in keys:
        label = metric_label(key)
        assert label is not None and label.name != key and label.meaning.endswith("."), key


def test_every_classification_metric_of_either_split_has_a_label() -> None:
    labels = pd.Series(["<30", "NO", ">30", "<30", "NO", "NO", ">30", "NO"])
    risk = np.array([0.6, 0.1, 0.2, 0.4, 0.3, 0.05, 0.2, 0.1])
    probabilities = np.column_stack([1 - risk - 0.1, np.full(len(risk), 0.1), risk])
    for key in classification_metrics(labels, probabilities, risk):
        assert metric_label(f"validation_{key}") is not None and metric_label(f"test_{key}") is not None, key


def test_validation_and_test_sit_side_by_side_and_the_rest_has_its_own_table() -> None:
    """Before: raw keys (`brier_skill_30`), a `value` column that was mostly None."""
    table = split_metrics_table(METRICS)
    assert list(table.columns) == ["Metric", "Validation", "Test", "Meaning"]
    rows = table.set_index("Metric")
    assert rows.loc["ROC-AUC (30-day)", "Validation"] == "0.6712" and rows.loc["ROC-AUC (30-day)", "Test"] == "0.6600"
    assert rows.loc["Prevalence (30-day)"].tolist()[:2] == ["11.2%", "11.5%"]
    assert rows.loc["Calibration intercept (30-day)", "Validation"] == "–"  # logged for test only: a dash
    assert rows.loc["Calibration intercept (30-day)", "Test"] == "-0.0123"
    assert table.notna().all().all() and (table != "").all().all() and (table != "None").all().all()
    figures = run_figures_table(METRICS)
    assert figures.to_dict("list")["Figure"] == ["Decision threshold (30-day)", "Fit time", "Rows fitted"]
    assert figures.to_dict("list")["Value"] == ["13.8%", "1,234.6 s", "89,654"]


def test_an_unnamed_key_is_shown_under_its_own_name_not_dropped() -> None:
    table = split_metrics_table({"test_new_metric": 0.5, "validation_roc_auc_30": 0.7})
    assert table["Metric"].tolist() == ["ROC-AUC (30-day)", "new_metric"]
    assert run_figures_table({"refit_seconds": 2.0})["Figure"].tolist() == ["refit_seconds"]


def test_the_headline_is_short_and_from_the_test_split() -> None:
    assert [(label, value) for label, value, _ in headline(METRICS)] == [("ROC-AUC (test)", "0.6600")]
    for _, value, _ in headline({"test_roc_auc_30": 0.123456789, "test_average_precision_30": 0.2}):
        assert len(value) <= 8


def test_the_history_shows_each_decision_and_reason() -> None:
    versions = [
        {"version": "3", "created_at": "2025-01-03T10:00:00Z", "aliases": [], "family": "hist_gradient_boosting",
         "decision": None, "reason": None, "candidate_score": None, "serving": False, "rollback_reason": None},
        {"version": "2", "created_at": "2025-01-02T10:00:00Z", "aliases": ["challenger"], "family": "random_forest",
         "decision": "kept previous champion", "reason": "roc_auc_30 0.6500 does not beat champion v1 (0.6600)",
         "candidate_score": 0.65, "serving": False, "rollback_reason": None},
        {"version": "1", "created_at": "2025-01-01T10:00:00Z", "aliases": ["champion"], "family": "logistic_regression",
         "decision": "promoted", "reason": "no champion yet", "candidate_score": 0.66, "serving": True,
         "rollback_reason": "manual rollback (champion was v2)"},
    ]  # fmt: skip
    table = history_table(versions)
    assert list(table.columns) == list(HISTORY_COLUMNS)
    assert table["Version"].tolist() == ["v3", "v2", "v1"]
    assert table["Decision"].tolist() == ["not gated yet", "kept previous champion", "promoted"]
    assert table.loc[1, "Reason"] == "roc_auc_30 0.6500 does not beat champion v1 (0.6600)"
    assert table.loc[2, "Aliases"] == "champion" and table.loc[2, "Registered (UTC)"] == "2025-01-01 10:00"
    assert table.loc[2, "Note"] == "served here; rollback: manual rollback (champion was v2)"
    assert table.loc[1, "Family"] == "random forest" and table.loc[0, "Test ROC-AUC"] == "–"


def test_the_importance_chart_shows_the_top_inputs_largest_first_in_words() -> None:
    features = [{"feature": name, "importance": i / 1000} for i, name in enumerate(schema.MODEL_INPUT_NAMES)]
    rows = importance_rows(features)
    assert len(rows) == TOP_FEATURES and rows["importance"].is_monotonic_decreasing
    assert rows["name"].iloc[0] == schema.MODEL_INPUT_NAMES[-1]
    assert rows["feature"].iloc[0] == feature_label(schema.MODEL_INPUT_NAMES[-1]) != rows["name"].iloc[0]
    assert rows["feature"].is_unique
    spec = importance_chart(features, "mean drop in ROC-AUC").to_dict()
    assert spec["mark"]["type"] == "bar"
    x, y = spec["encoding"]["x"], spec["encoding"]["y"]
    assert (x["field"], y["field"]) == ("importance", "feature")  # horizontal bars: one per input on the y axis
    assert y["sort"] == rows["feature"].tolist() and y["axis"]["labelLimit"] == 0  # labels never cut
    assert feature_label("number_inpatient") == "Inpatient visits in the year before"
    assert feature_label("unknown_input") == "unknown_input"


@pytest.mark.parametrize("label", [*SPLIT_METRICS.values(), *RUN_FIGURES.values()])
def test_each_label_formats_any_value_whole(label: object) -> None:
    assert label.format(None) == "–" and label.format(float("nan")) == "–"  # type: ignore[attr-defined]
    assert "e" not in label.format(1e-9) and label.format(123456.0)  # type: ignore[attr-defined]


def test_figures_of_another_run_are_refused_not_cached() -> None:
    """The plots and importance answers are about whatever version serves at the moment of the call: one
    about another run than the page asked for (a swap in between) must not be kept under the old run's id."""
    answer = {"run_id": "b" * 32, "plots": {"roc": True}}
    assert model_view.same_run(answer, "b" * 32) is answer
    with pytest.raises(ApiProblem, match="the served model changed while the page was loading it"):
        model_view.same_run(answer, "a" * 32)
