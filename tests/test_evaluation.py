"""Metrics of the 30-day risk against hand computations and known cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from readmission.evaluation import best_f1_threshold, calibration_line, classification_metrics, write_plots
from readmission.names import PLOT_FILES
from readmission.schema import TARGET_LABELS


def _sample(n: int, seed: int = 0) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Labels drawn FROM the probabilities, so the probabilities are calibrated by construction."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet([6.0, 3.0, 1.0], size=n)  # columns in TARGET_LABELS order: NO, >30, <30
    labels = pd.Series([rng.choice(TARGET_LABELS, p=p) for p in probabilities])
    return labels, probabilities, probabilities[:, 2]


def test_log_loss_and_brier_match_hand_computation() -> None:
    labels, probabilities, risk = _sample(2_000)
    metrics = classification_metrics(labels, probabilities, risk)
    picked = probabilities[np.arange(len(labels)), [TARGET_LABELS.index(y) for y in labels]]
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log(picked)))
    early = (labels == "<30").to_numpy().astype(float)
    assert metrics["brier_30"] == pytest.approx(np.mean((risk - early) ** 2))
    assert metrics["prevalence_30"] == pytest.approx(early.mean())


def test_calibrated_probabilities_have_slope_one_and_positive_skill() -> None:
    labels, probabilities, risk = _sample(20_000, seed=1)
    metrics = classification_metrics(labels, probabilities, risk)
    assert metrics["calibration_slope_30"] == pytest.approx(1.0, abs=0.1)
    assert metrics["calibration_intercept_30"] == pytest.approx(0.0, abs=0.15)
    assert metrics["brier_skill_30"] > 0
    assert 0.5 < metrics["roc_auc_30"] < 1
    assert 0.5 < metrics["roc_auc_ovr_macro"] < 1


def test_overconfident_risk_has_slope_below_one_and_constant_risk_has_no_skill() -> None:
    labels, _, risk = _sample(20_000, seed=2)
    early = (labels == "<30").to_numpy().astype(int)
    logit = np.log(risk / (1 - risk))
    overconfident = 1 / (1 + np.exp(-3 * logit))
    slope, _ = calibration_line(early, overconfident)
    assert slope == pytest.approx(1 / 3, abs=0.05)
    constant = np.full(len(labels), early.mean())
    probabilities = np.column_stack([(1 - constant) / 2, (1 - constant) / 2, constant])
    assert classification_metrics(labels, probabilities, constant)["brier_skill_30"] == pytest.approx(0.0, abs=1e-9)


def test_best_f1_threshold_separates_a_clean_split() -> None:
    early = np.array([0, 0, 0, 1, 1])
    risk = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert best_f1_threshold(early, risk) == pytest.approx(0.8)


def test_write_plots_writes_every_plot_the_api_serves(tmp_path: Path) -> None:
    """GET /model/plots/{name} reads these files (readmission.names.PLOT_FILES) from the winner's run."""
    labels, _, risk = _sample(600, seed=3)
    importance = pd.Series([0.02, 0.01, 0.0], index=["number_inpatient", "age", "race"])
    paths = write_plots(tmp_path, labels, risk, 0.2, importance)
    assert sorted(path.name for path in paths) == sorted(PLOT_FILES.values())
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
