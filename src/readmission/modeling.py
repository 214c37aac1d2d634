"""Candidate models: one sklearn Pipeline per family, all preprocessing inside, raw contract columns in.

A fitted pipeline takes a frame with the columns of ``schema.MODEL_INPUT_NAMES`` exactly as the contract
defines them (categories as text, coded ids as integers, None for missing) and predicts the three
classes of ``readmitted``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from readmission import schema
from readmission.clean import diagnosis_group

CATEGORICAL_INPUTS: tuple[str, ...] = tuple(
    c.name for c in schema.FEATURE_COLUMNS if c.kind in (schema.Kind.CATEGORY, schema.Kind.CODED)
)
DIAGNOSIS_INPUTS: tuple[str, ...] = tuple(c.name for c in schema.FEATURE_COLUMNS if c.kind is schema.Kind.DIAGNOSIS)
NUMERIC_INPUTS: tuple[str, ...] = (
    *(c.name for c in schema.FEATURE_COLUMNS if c.kind is schema.Kind.INTEGER),
    *schema.HISTORY_FEATURE_NAMES,
)
DERIVED_NUMERIC: tuple[str, ...] = ("visits_last_year", "medications_changed", "medications_taken")
# High-cardinality text (about 700 ICD-9 codes per column, 70 specialties): target-encoded with cross-fitting.
TARGET_ENCODED: tuple[str, ...] = (*(f"{n}_code" for n in DIAGNOSIS_INPUTS), "medical_specialty")
MISSING_LEVEL = "missing"


def prepare_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Contract columns -> model columns: categories as text ('missing' for null), ICD-9 codes as their
    clinical group, counts as floats, plus a few sums. First step of every pipeline."""
    out: dict[str, Any] = {}
    for name in CATEGORICAL_INPUTS:
        out[name] = frame[name].astype("string").fillna(MISSING_LEVEL).astype(object)
    for name in DIAGNOSIS_INPUTS:
        out[name] = diagnosis_group(frame[name]).fillna(MISSING_LEVEL).astype(object)
        out[f"{name}_code"] = frame[name].astype("string").fillna(MISSING_LEVEL).astype(object)
    for name in NUMERIC_INPUTS:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    out["visits_last_year"] = out["number_outpatient"] + out["number_emergency"] + out["number_inpatient"]
    doses = frame[list(schema.MEDICATIONS)].astype("string")
    out["medications_changed"] = doses.isin(["Up", "Down"]).sum(axis=1).astype("float64")
    out["medications_taken"] = doses.ne("No").sum(axis=1).astype("float64")
    return pd.DataFrame(out, index=frame.index)


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns of a CLEAN frame, in contract order, with plain Python-friendly dtypes."""
    out = frame[list(schema.MODEL_INPUT_NAMES)].copy()
    for name in out.columns:
        col = schema.COLUMNS_BY_NAME.get(name)
        if col is None or col.is_integer or col.kind is schema.Kind.INTEGER:
            out[name] = out[name].astype("float64") if out[name].isna().any() else out[name].astype("int64")
        else:
            out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


_CATEGORY_COLUMNS = [*CATEGORICAL_INPUTS, *DIAGNOSIS_INPUTS]
_NUMBER_COLUMNS = [*NUMERIC_INPUTS, *DERIVED_NUMERIC]


def _ordinal_trees(estimator: Any, target_encode: bool = True) -> Pipeline:
    branches: list[tuple[str, Any, list[str]]] = [
        (
            "categories",
            OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float64),
            _CATEGORY_COLUMNS,
        ),
        ("numbers", "passthrough", _NUMBER_COLUMNS),
    ]
    if target_encode:
        branches.append(("codes", TargetEncoder(cv=KFold(5, shuffle=True, random_state=0)), list(TARGET_ENCODED)))
    encode = ColumnTransformer(branches, verbose_feature_names_out=False)
    return Pipeline([("prepare", FunctionTransformer(prepare_features)), ("encode", encode), ("model", estimator)])


class EarlyReadmissionChain(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Three classes from two binary models: P(<30) = early(x); P(>30) = (1 - P(<30)) * later(x).

    The 30-day risk, which the platform is judged on, gets a model of its own instead of a third of a
    multinomial one; the chain rule keeps the three probabilities a proper distribution.
    """

    def __init__(self, early: Any, later: Any) -> None:
        self.early = early
        self.later = later

    def fit(self, x: Any, y: Any) -> EarlyReadmissionChain:
        """Fit ``early`` on (<30 vs rest) and ``later`` on the rest (>30 vs NO); keep the mean of each input
        column (``input_mean_``, the reference of a linear link's explanation: ``readmission.explanation``)."""
        labels = np.asarray(y, dtype=object)
        self.input_mean_ = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
        is_early = labels == schema.POSITIVE_LABEL
        self.early_ = clone(self.early).fit(x, is_early.astype(int))
        rest = ~is_early
        self.later_ = clone(self.later).fit(x[rest], (labels[rest] == ">30").astype(int))
        self.classes_ = np.array(sorted(schema.TARGET_LABELS), dtype=object)
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        """Columns in ``classes_`` order ('<30', '>30', 'NO')."""
        early = self.early_.predict_proba(x)[:, 1]
        later = (1.0 - early) * self.later_.predict_proba(x)[:, 1]
        result: np.ndarray = np.column_stack([early, later, 1.0 - early - later])
        return result

    def predict(self, x: Any) -> np.ndarray:
        """The most probable class."""
        labels: np.ndarray = self.classes_[np.argmax(self.predict_proba(x), axis=1)]
        return labels


def logistic_regression(C: float = 0.1, min_frequency: int = 50) -> Pipeline:  # noqa: N803 - sklearn's name
    """Regularised logistic regressions on one-hot categories and log-scaled counts, one binary model per link
    of the chain (so the 30-day log-odds is linear in the encoded inputs and explained exactly)."""
    encode = ColumnTransformer(
        [
            (
                "categories",
                OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=min_frequency),
                _CATEGORY_COLUMNS,
            ),
            (
                "numbers",
                Pipeline([("log", FunctionTransformer(np.log1p)), ("scale", StandardScaler())]),
                _NUMBER_COLUMNS,
            ),
        ]
    )
    model = EarlyReadmissionChain(LogisticRegression(C=C, max_iter=2_000), LogisticRegression(C=C, max_iter=2_000))
    return Pipeline([("prepare", FunctionTransformer(prepare_features)), ("encode", encode), ("model", model)])


def hist_gradient_boosting(
    learning_rate: float = 0.05,
    max_leaf_nodes: int = 15,
    min_samples_leaf: int = 100,
    l2_regularization: float = 1.0,
    max_iter: int = 600,
    seed: int = 0,
) -> Pipeline:
    """Gradient-boosted trees with native categorical splits, one binary model per link of the chain."""
    categorical = [True] * len(_CATEGORY_COLUMNS) + [False] * (len(_NUMBER_COLUMNS) + 3 * len(TARGET_ENCODED))

    def boosted() -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            learning_rate=learning_rate,
            max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf,
            l2_regularization=l2_regularization,
            max_iter=max_iter,
            categorical_features=categorical,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=30,
            random_state=seed,
        )

    return _ordinal_trees(EarlyReadmissionChain(boosted(), boosted()))


def random_forest(
    n_estimators: int = 200, min_samples_leaf: int = 20, max_features: float = 0.3, seed: int = 0
) -> Pipeline:
    """A random forest on ordinal-encoded categories (leaf size bounds the model's size on disk)."""
    model = RandomForestClassifier(
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        max_features=max_features,
        n_jobs=-1,
        random_state=seed,
    )
    return _ordinal_trees(model, target_encode=False)


@dataclass(frozen=True)
class Family:
    """A model family: how to build it and the hyper-parameters to try, best guess first."""

    name: str
    build: Callable[..., Pipeline]
    trials: tuple[dict[str, Any], ...]

    def candidates(self, seed: int) -> Iterator[tuple[dict[str, Any], Pipeline]]:
        """(parameters, unfitted pipeline) in the order they are tried."""
        for params in self.trials:
            full = {**params, "seed": seed} if "seed" in self.build.__code__.co_varnames else dict(params)
            yield full, self.build(**full)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "logistic_regression",
            logistic_regression,
            ({"C": 0.05}, {"C": 0.5}, {"C": 0.01, "min_frequency": 200}),
        ),
        Family(
            "hist_gradient_boosting",
            hist_gradient_boosting,
            (
                {"learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 100},
                {"learning_rate": 0.05, "max_leaf_nodes": 7, "min_samples_leaf": 300},
                {"learning_rate": 0.03, "max_leaf_nodes": 15, "min_samples_leaf": 200, "max_iter": 1000},
            ),
        ),
        Family(
            "random_forest",
            random_forest,
            ({"min_samples_leaf": 20, "max_features": 0.3}, {"min_samples_leaf": 50, "max_features": 0.5}),
        ),
    )
}
