"""Behaviour of the champion family trained on the full UCI data: quality, leakage, direction, invariance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from readmission import schema
from readmission.clean import SplitSpec, build_clean, read_clean
from readmission.db import create_db_engine
from readmission.evaluation import classification_metrics, risk_of
from readmission.modeling import hist_gradient_boosting, model_input
from readmission.raw import SourceFile, load_raw_batches
from readmission.serving import Predictor
from readmission.steps import trial_share
from readmission.training import TrainConfig, fit_family

pytestmark = pytest.mark.slow

# Test ROC-AUC <30 of the boosted chain over split seeds 1-5 (`python bench/model.py`, CHANGELOG #20).
FAMILY_MEAN, FAMILY_SD = 0.6853, 0.0064
DEFAULT_BUDGET_SECONDS = 240.0  # TRAIN_TIME_BUDGET_SECONDS' default, shared by the three default families


@pytest.fixture(scope="module")
def splits(real_data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("full")
    raw = create_db_engine(f"sqlite:///{folder / 'raw.db'}")
    clean = create_db_engine(f"sqlite:///{folder / 'clean.db'}")
    load_raw_batches(raw, SourceFile.read(real_data_path))
    build_clean(raw, clean, SplitSpec(seed=42))
    frame = read_clean(clean)
    return {s: frame[frame["split"] == s] for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def model(splits: dict[str, pd.DataFrame]) -> Any:
    """The champion family as the default training makes it (``training.fit_family`` with the job's share of the
    default budget): the best trial on validation, recalibrated on validation or refitted on train +
    validation. The same procedure as the five seeds of the floor below."""
    xy = [(model_input(splits[s]), splits[s][schema.TARGET].astype(str)) for s in ("train", "validation")]
    config = TrainConfig(families=("hist_gradient_boosting",), time_budget_seconds=DEFAULT_BUDGET_SECONDS)
    share = trial_share(DEFAULT_BUDGET_SECONDS, 3)
    return fit_family("hist_gradient_boosting", xy[0], xy[1], config, budget_seconds=share, log=print).model


def _early(frame: pd.DataFrame) -> np.ndarray:
    return (frame[schema.TARGET] == schema.POSITIVE_LABEL).to_numpy().astype(int)


def test_quality_on_the_patient_grouped_test_split(model: Any, splits: dict[str, pd.DataFrame]) -> None:
    test = splits["test"]
    metrics = classification_metrics(test[schema.TARGET].astype(str), *risk_of(model, model_input(test)))
    # The floor is the family's mean - 3 sd over the five patient-grouped splits of `bench/model.py` (CHANGELOG
    # #20: 0.6853 +- 0.0064), not one split's score: this split (seed 42) is one more draw of that.
    assert metrics["roc_auc_30"] >= FAMILY_MEAN - 3 * FAMILY_SD, metrics
    assert metrics["brier_skill_30"] > 0, metrics
    assert 0.85 <= metrics["calibration_slope_30"] <= 1.15, metrics


def test_the_champion_family_serves_on_the_compiled_path(model: Any, splits: dict[str, pd.DataFrame]) -> None:
    """The chain as training leaves it (refitted, or recalibrated): the API's compiled path takes it and agrees."""
    predictor = Predictor(model)
    assert predictor.path in {"compiled", "compiled-calibrated"}  # refitted, or recalibrated when fewer trials ran
    x = model_input(splits["test"].head(300))
    rows = [{k: (None if pd.isna(v) else v) for k, v in record.items()} for record in x.to_dict(orient="records")]
    np.testing.assert_allclose(predictor.predict_proba(rows), model.predict_proba(x), rtol=0, atol=1e-9)


def test_shuffled_labels_leave_nothing_to_learn(splits: dict[str, pd.DataFrame]) -> None:
    train, test = splits["train"], splits["test"]
    shuffled = train[schema.TARGET].astype(str).sample(frac=1.0, random_state=0).to_numpy()
    noise_model = hist_gradient_boosting().fit(model_input(train), shuffled)
    auc = roc_auc_score(_early(test), risk_of(noise_model, model_input(test))[1])
    assert auc == pytest.approx(0.5, abs=0.03)


def test_no_identifier_or_outcome_reaches_the_model(model: Any) -> None:
    seen = set(model.feature_names_in_)
    assert seen == set(schema.MODEL_INPUT_NAMES)
    assert not seen & {"encounter_id", "patient_nbr", schema.TARGET, "split", "batch_number"}


@pytest.mark.parametrize(
    "feature", ["number_inpatient", "prior_early_readmissions", "prior_encounters", "previous_number_inpatient"]
)
def test_more_prior_hospital_use_does_not_lower_the_risk_on_average(
    model: Any, splits: dict[str, pd.DataFrame], feature: str
) -> None:
    x = model_input(splits["test"])
    more = x.assign(**{feature: x[feature] + 1})
    assert risk_of(model, more)[1].mean() > risk_of(model, x)[1].mean()


def test_identifiers_extra_columns_and_row_order_do_not_change_a_prediction(
    model: Any, splits: dict[str, pd.DataFrame]
) -> None:
    x = model_input(splits["test"].head(200))
    base = risk_of(model, x)[0]
    with_ids = x.assign(encounter_id=np.arange(len(x)), patient_nbr=7, note="ignored")
    np.testing.assert_array_equal(risk_of(model, with_ids)[0], base)
    reversed_rows = risk_of(model, x.iloc[::-1])[0][::-1]
    np.testing.assert_allclose(reversed_rows, base, rtol=0, atol=1e-12)


def test_one_row_at_a_time_equals_a_batch(model: Any, splits: dict[str, pd.DataFrame]) -> None:
    """The API may micro-batch requests: a row's answer must not depend on its neighbours."""
    x = model_input(splits["test"].head(25))
    batch = risk_of(model, x)[0]
    single = np.vstack([risk_of(model, x.iloc[[i]])[0] for i in range(len(x))])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)
