"""The serving fast path gives exactly the pipeline's probabilities, for every family, on real rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator

from readmission import schema
from readmission.clean import diagnosis_group, diagnosis_group_of
from readmission.modeling import (
    EarlyReadmissionChain,
    hist_gradient_boosting,
    logistic_regression,
    model_input,
    prepare_features,
    random_forest,
)
from readmission.serving import Predictor, prepare_columns, rows_to_frame


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """What the API hands over: validated values, None for missing (never NaN)."""
    x = model_input(frame)
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in x.to_dict("records")
    ]


@pytest.fixture(scope="module")
def data(real_clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train = real_clean[real_clean["split"] == "train"].sample(12_000, random_state=1)
    calibrate = real_clean[real_clean["split"] == "validation"].head(3_000)
    test = real_clean[real_clean["split"] == "test"].head(2_000)
    return train, calibrate, test


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: hist_gradient_boosting(max_iter=60), "compiled"),
        (lambda: random_forest(n_estimators=20), "compiled-input"),
        (lambda: logistic_regression(), "pipeline"),
    ],
    ids=["hist_gradient_boosting", "random_forest", "logistic_regression"],
)
def test_each_family_predicts_exactly_as_its_pipeline(data: Any, build: Any, path: str) -> None:
    train, _, test = data
    model = build().fit(model_input(train), train[schema.TARGET].astype(str))
    predictor = Predictor(model)
    assert predictor.path == path
    expected = model.predict_proba(model_input(test))
    np.testing.assert_allclose(predictor.predict_proba(_rows(test)), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(predictor.predict_proba(_rows(test.head(1))), expected[:1], rtol=0, atol=1e-12)
    assert list(predictor.classes_) == ["<30", ">30", "NO"]


def test_a_chain_of_trees_that_are_not_compiled_is_labelled_and_capped_as_scikit_learns_code(data: Any) -> None:
    """New-user try of #24: any chain was labelled ``compiled`` (and so ran without the MODEL_THREADS cap), also
    one whose estimators the service does not compile and calls through scikit-learn."""
    train, _, test = data
    model = hist_gradient_boosting(max_iter=20)
    forest = RandomForestClassifier(n_estimators=10, min_samples_leaf=50, random_state=0)
    model.steps[-1] = (model.steps[-1][0], EarlyReadmissionChain(forest, forest))
    model.fit(model_input(train), train[schema.TARGET].astype(str))
    predictor = Predictor(model, threads=1)
    assert predictor.path == "compiled-input"
    expected = model.predict_proba(model_input(test))
    np.testing.assert_allclose(predictor.predict_proba(_rows(test)), expected, rtol=0, atol=1e-12)


def test_unseen_categories_and_codes_take_the_pipelines_fallbacks(data: Any) -> None:
    train, _, test = data
    model = hist_gradient_boosting(max_iter=40).fit(model_input(train), train[schema.TARGET].astype(str))
    rows = _rows(test.head(50))
    for row in rows:  # values the small training sample never saw, all allowed by the contract
        row["diag_1"], row["diag_2"], row["medical_specialty"] = "V99", "E999", "Speech"
        row["payer_code"], row["weight"] = None, None
    expected = model.predict_proba(rows_to_frame(rows))
    np.testing.assert_allclose(Predictor(model).predict_proba(rows), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: hist_gradient_boosting(max_iter=40), "compiled-calibrated"),
        (lambda: random_forest(n_estimators=20), "compiled-input-calibrated"),
        (lambda: logistic_regression(), "pipeline"),
    ],
    ids=["hist_gradient_boosting", "random_forest", "logistic_regression"],
)
def test_a_calibrated_wrapper_is_compiled_and_equals_the_model(data: Any, build: Any, path: str) -> None:
    """Was: any calibrated champion (2 of the 5 seeds of `bench/model.py`) left the compiled path."""
    train, calibrate, test = data
    base = build().fit(model_input(train), train[schema.TARGET].astype(str))
    model = CalibratedClassifierCV(FrozenEstimator(base), method="sigmoid")
    model.fit(model_input(calibrate), calibrate[schema.TARGET].astype(str))
    predictor = Predictor(model)
    assert predictor.path == path
    expected = model.predict_proba(model_input(test))
    np.testing.assert_allclose(predictor.predict_proba(_rows(test)), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(predictor.predict_proba(_rows(test.head(1))), expected[:1], rtol=0, atol=1e-12)
    assert list(predictor.classes_) == list(model.classes_)


def test_an_isotonic_calibration_is_not_taken_for_a_sigmoid_one(data: Any) -> None:
    train, calibrate, test = data
    base = hist_gradient_boosting(max_iter=20).fit(model_input(train), train[schema.TARGET].astype(str))
    model = CalibratedClassifierCV(FrozenEstimator(base), method="isotonic")
    model.fit(model_input(calibrate), calibrate[schema.TARGET].astype(str))
    predictor = Predictor(model)
    assert predictor.path == "pipeline"
    np.testing.assert_allclose(
        predictor.predict_proba(_rows(test.head(200))), model.predict_proba(model_input(test.head(200))), atol=1e-12
    )


def test_rows_to_frame_matches_model_input(data: Any) -> None:
    _, _, test = data
    expected = model_input(test).reset_index(drop=True)
    frame = rows_to_frame(_rows(test))
    pd.testing.assert_frame_equal(frame, expected)


def test_prepare_columns_equals_prepare_features_column_by_column(data: Any) -> None:
    _, _, test = data
    expected = prepare_features(model_input(test)).reset_index(drop=True)
    got = prepare_columns(_rows(test))
    assert set(got) == set(expected.columns)
    for name, values in got.items():
        want = expected[name].to_numpy()
        if values.dtype == object:
            assert values.tolist() == want.tolist(), name
        else:
            np.testing.assert_array_equal(values, want.astype(np.float64), err_msg=name)
    # the real rows exercise every dose the medication counts distinguish
    doses = set(test[list(schema.MEDICATIONS)].to_numpy().ravel().tolist())
    assert {"No", "Steady", "Up", "Down"} <= doses and got["medications_changed"].max() >= 2


def test_scalar_diagnosis_group_matches_the_vectorised_one(real_clean: pd.DataFrame) -> None:
    codes = pd.concat([real_clean[f"diag_{n}"] for n in (1, 2, 3)]).drop_duplicates()
    expected = diagnosis_group(codes)
    got = [diagnosis_group_of(None if pd.isna(c) else c) for c in codes]
    assert len(codes) > 900
    assert got == [None if pd.isna(g) else g for g in expected]
