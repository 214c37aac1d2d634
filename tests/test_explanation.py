"""Explanations of every family on real rows: exact additivity to the model's own 30-day output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from readmission import schema
from readmission.explanation import (
    LOG_ODDS,
    PROBABILITY,
    Explainer,
    NotExplainableError,
    describe,
    feature_values,
)
from readmission.modeling import hist_gradient_boosting, logistic_regression, model_input, random_forest
from test_serving import _rows


@pytest.fixture(scope="module")
def data(real_clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train = real_clean[real_clean["split"] == "train"].sample(12_000, random_state=2)
    calibrate = real_clean[real_clean["split"] == "validation"].head(3_000)
    test = real_clean[real_clean["split"] == "test"].head(500)
    return train, calibrate, test


def _fit(build: Any, train: pd.DataFrame) -> Any:
    return build().fit(model_input(train), train[schema.TARGET].astype(str))


FAMILIES = [
    (lambda: hist_gradient_boosting(max_iter=80), LOG_ODDS),
    (lambda: random_forest(n_estimators=15, min_samples_leaf=50), PROBABILITY),
    (lambda: logistic_regression(), LOG_ODDS),
]
IDS = ["hist_gradient_boosting", "random_forest", "logistic_regression"]


@pytest.mark.parametrize(("build", "scale"), FAMILIES, ids=IDS)
def test_contributions_add_up_to_the_models_30_day_output(data: Any, build: Any, scale: str) -> None:
    train, _, test = data
    model = _fit(build, train)
    explained = Explainer(model).explain(_rows(test))
    early = model.predict_proba(model_input(test))[:, list(model.classes_).index(schema.POSITIVE_LABEL)]
    output = logit(early) if scale == LOG_ODDS else early
    assert explained.scale == scale and not explained.calibrated
    total = explained.base_value + explained.contributions.sum(axis=1)
    np.testing.assert_allclose(total, output, rtol=0, atol=1e-6)
    np.testing.assert_allclose(explained.values, output, rtol=0, atol=1e-6)
    assert explained.contributions.shape == (len(test), len(explained.features))
    # Every input of the contract is explained under its own name, plus the three sums the model adds.
    assert set(schema.MODEL_INPUT_NAMES) <= set(explained.features)
    assert len(explained.features) == len(schema.MODEL_INPUT_NAMES) + 3
    assert np.abs(explained.contributions).sum(axis=0).max() > 0


@pytest.mark.parametrize(("build", "scale"), FAMILIES, ids=IDS)
def test_a_recalibrated_model_explains_its_link_before_calibration(data: Any, build: Any, scale: str) -> None:
    train, calibrate, test = data
    pipeline = _fit(build, train)
    model = CalibratedClassifierCV(FrozenEstimator(pipeline), method="sigmoid")
    model.fit(model_input(calibrate), calibrate[schema.TARGET].astype(str))
    explained = Explainer(model).explain(_rows(test.head(50)))
    assert explained.calibrated
    early = pipeline.predict_proba(model_input(test.head(50)))[:, 0]
    np.testing.assert_allclose(explained.values, logit(early) if scale == LOG_ODDS else early, atol=1e-6)


def test_unseen_levels_and_missing_values_are_explained_exactly(data: Any) -> None:
    train, _, test = data
    model = _fit(lambda: hist_gradient_boosting(max_iter=40), train)
    rows = _rows(test.head(30))
    for row in rows:
        row["diag_1"], row["medical_specialty"], row["payer_code"], row["A1Cresult"] = "V99", "Speech", None, None
    explained = Explainer(model).explain(rows)
    early = model.predict_proba(pd.DataFrame(rows)[list(schema.MODEL_INPUT_NAMES)])[:, 0]
    np.testing.assert_allclose(explained.values, logit(early), atol=1e-6)


def test_a_model_without_a_chain_is_refused_with_the_reason(data: Any) -> None:
    train, _, _ = data
    old = logistic_regression()
    old.steps[-1] = ("model", old.steps[-1][1].early)  # a multinomial model, as trained before the chain
    old.fit(model_input(train.head(3000)), train[schema.TARGET].head(3000).astype(str))
    with pytest.raises(NotExplainableError, match="LogisticRegression models are not explained"):
        Explainer(old)


def test_features_have_words_and_the_values_sent(data: Any) -> None:
    _, _, test = data
    features = (*schema.MODEL_INPUT_NAMES, "visits_last_year", "medications_changed", "medications_taken")
    assert all(describe(f) for f in features)
    row = _rows(test.head(1))[0]
    values = feature_values(features, [row])[0]
    assert values["race"] == row["race"] and values["diag_1"] == row["diag_1"]
    assert values["visits_last_year"] == row["number_outpatient"] + row["number_emergency"] + row["number_inpatient"]


def test_changing_one_field_moves_only_its_own_contribution_in_the_linear_model(data: Any) -> None:
    """Additivity cannot catch a column given to the wrong field (the sum is the same); the linear model can:
    its contributions are per field, so changing one field changes that field's contribution (and the sums
    derived from it), nothing else."""
    train, _, test = data
    explainer = Explainer(_fit(lambda: logistic_regression(), train))
    row = _rows(test.head(1))[0]
    changes = {
        "race": "Asian" if row["race"] != "Asian" else "Hispanic",
        "diag_1": "V45" if row["diag_1"] != "V45" else "428",
        "number_emergency": row["number_emergency"] + 3,
        "insulin": "Up" if row["insulin"] != "Up" else "No",
    }
    derived = {"number_emergency": {"visits_last_year"}, "insulin": {"medications_changed", "medications_taken"}}
    before = explainer.explain([row]).contributions[0]
    for field, value in changes.items():
        after = explainer.explain([{**row, field: value}]).contributions[0]
        moved = {f for f, b, a in zip(explainer.features, before, after, strict=True) if abs(a - b) > 1e-12}
        assert field in moved and moved <= {field, *derived.get(field, set())}, (field, moved)
