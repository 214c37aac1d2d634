"""Metrics and plots of a three-class readmission model, centred on the 30-day risk P(<30)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from readmission.names import PLOT_FILES
from readmission.schema import POSITIVE_LABEL, TARGET_LABELS

_EPS = 1e-6
_SORTED_COLUMNS = [TARGET_LABELS.index(label) for label in sorted(TARGET_LABELS)]


def risk_of(model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities in TARGET_LABELS order, 30-day risk) of ``model`` on ``frame``."""
    raw = model.predict_proba(frame)
    order = [list(model.classes_).index(label) for label in TARGET_LABELS]
    probabilities = raw[:, order]
    return probabilities, probabilities[:, TARGET_LABELS.index(POSITIVE_LABEL)]


def calibration_line(y_early: np.ndarray, risk: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the logistic recalibration of ``risk`` (1 and 0 when perfectly calibrated)."""
    logit = np.log(np.clip(risk, _EPS, 1 - _EPS) / np.clip(1 - risk, _EPS, 1))
    fit = LogisticRegression(C=1e6, max_iter=1_000).fit(logit.reshape(-1, 1), y_early)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def best_f1_threshold(y_early: np.ndarray, risk: np.ndarray) -> float:
    """The risk threshold with the highest F1 for the 30-day class (chosen on validation data)."""
    precision, recall, thresholds = precision_recall_curve(y_early, risk)
    f1 = 2 * precision * recall / np.clip(precision + recall, _EPS, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(labels: pd.Series, probabilities: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """The metrics tracked for every candidate and split."""
    y = labels.to_numpy(dtype=object)
    y_early = (y == POSITIVE_LABEL).astype(int)
    prevalence = float(y_early.mean())
    brier = float(brier_score_loss(y_early, risk))
    slope, intercept = calibration_line(y_early, risk)
    return {
        "roc_auc_30": float(roc_auc_score(y_early, risk)),
        # one-vs-rest AUC of each class, averaged (sklearn's multi_class="ovr" needs sorted labels)
        "roc_auc_ovr_macro": float(
            np.mean([roc_auc_score(y == label, probabilities[:, i]) for i, label in enumerate(TARGET_LABELS)])
        ),
        "average_precision_30": float(average_precision_score(y_early, risk)),
        "brier_30": brier,
        "brier_skill_30": 1.0 - brier / max(prevalence * (1 - prevalence), _EPS),
        # log_loss reads the columns in sorted-label order, ours follow the contract's order
        "log_loss": float(log_loss(y, probabilities[:, _SORTED_COLUMNS], labels=sorted(TARGET_LABELS))),
        "calibration_slope_30": slope,
        "calibration_intercept_30": intercept,
        "prevalence_30": prevalence,
    }


def write_plots(
    folder: Path, labels: pd.Series, risk: np.ndarray, threshold: float, importance: pd.Series
) -> list[Path]:
    """ROC, precision-recall, reliability, confusion matrix and feature importance as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    y_early = (labels.to_numpy(dtype=object) == POSITIVE_LABEL).astype(int)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y_early, risk)
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y_early, risk):.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, readmission < 30 days")
    ax.legend()
    save(fig, PLOT_FILES["roc"])

    fig, ax = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(y_early, risk)
    ax.plot(recall, precision, label=f"AP {average_precision_score(y_early, risk):.3f}")
    ax.axhline(y_early.mean(), linestyle="--", color="grey", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, < 30 days")
    ax.legend()
    save(fig, PLOT_FILES["precision-recall"])

    fig, ax = plt.subplots(figsize=(5, 5))
    bins = pd.qcut(risk, 10, duplicates="drop")
    observed = pd.Series(y_early).groupby(bins, observed=True).mean()
    predicted = pd.Series(risk).groupby(bins, observed=True).mean()
    ax.plot(predicted, observed, marker="o", label="model (deciles)")
    top = float(max(predicted.max(), observed.max())) * 1.1
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect")
    ax.set(xlabel="predicted 30-day risk", ylabel="observed rate", title="Reliability")
    ax.legend()
    save(fig, PLOT_FILES["reliability"])

    fig, ax = plt.subplots(figsize=(4.5, 4))
    matrix = confusion_matrix(y_early, (risk >= threshold).astype(int), labels=[0, 1])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count:,}", ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["no", "< 30"], yticklabels=["no", "< 30"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion at risk >= {threshold:.3f}")
    save(fig, PLOT_FILES["confusion-matrix"])

    fig, ax = plt.subplots(figsize=(6, 7))
    top_features = importance.sort_values().tail(20)
    ax.barh(top_features.index, top_features.to_numpy())
    ax.set(xlabel="drop in ROC-AUC (<30) when shuffled", title="Permutation importance (top 20)")
    save(fig, PLOT_FILES["feature-importance"])
    return paths
