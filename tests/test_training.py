"""Training, registry gate, rollback and model round trip on a real local MLflow store (synthetic data)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from readmission import schema
from readmission.clean import read_clean
from readmission.evaluation import risk_of
from readmission.modeling import model_input, prepare_features
from readmission.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    RegistryError,
    champion_version,
    list_versions,
    promote_if_better,
    rollback,
)
from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig, _score_on, fit_family, fit_sample, prepare_tracking

FAST = TrainConfig(
    families=("logistic_regression", "hist_gradient_boosting"),
    time_budget_seconds=60,
    max_trials=1,
    importance_rows=300,
)


@pytest.fixture(scope="module")
def clean_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A CLEAN database built from 6,000 synthetic encounters."""
    folder = tmp_path_factory.mktemp("clean")
    return build_synthetic_clean(folder, rows=6_000, seed=21, split_seed=3)


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[str]:
    """A fresh local MLflow store (SQLite metadata, artifacts in a folder)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_tracking(uri, (tmp_path / "artifacts").as_uri())
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _dummy(clean_db: Any) -> Pipeline:
    """A fitted model that predicts the class mix for everyone (ROC-AUC 0.5): the worst honest model."""
    train = read_clean(clean_db, "train")
    model = Pipeline([("prepare", FunctionTransformer(prepare_features)), ("model", DummyClassifier())])
    return model.fit(model_input(train), train[schema.TARGET].astype(str))


def _log(model: Any) -> str:
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle", pip_requirements=[])
    return str(mlflow.register_model(info.model_uri, MODEL_NAME).version)


def test_training_registers_and_promotes_and_the_champion_round_trips(clean_db: Any, tracking: str) -> None:
    job = train_job(str(clean_db.url), tracking, FAST, log=lambda _: None)
    assert {c["family"] for c in job["candidates"]} == {"logistic_regression", "hist_gradient_boosting"}
    best, promotion = job["best"], job["promotion"]
    assert promotion["version"] == "1"
    assert promotion["promoted"] and promotion["reason"] == "no champion yet"
    client = MlflowClient(tracking, tracking)
    assert champion_version(client) == "1"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == "1"

    test = read_clean(clean_db, "test")
    loaded = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    expected, _ = risk_of(mlflow.sklearn.load_model(best["model_uri"]), model_input(test))
    served, _ = risk_of(loaded, model_input(test))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)
    # What `mlflow models serve` answers (the pyfunc flavour): probabilities, not class labels (issue #24).
    generic = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}").predict(model_input(test.head(50)))
    np.testing.assert_array_equal(generic, loaded.predict_proba(model_input(test.head(50))))

    tags = client.get_model_version(MODEL_NAME, "1").tags
    assert float(tags["test_roc_auc_30"]) == pytest.approx(best["test"]["roc_auc_30"], abs=1e-6)
    assert tags["data.raw_batches"] == "0" and tags["data.split_seed"] == "3"
    assert len(tags["data.checksum"]) == 64
    assert tags["training_key"] == job["training_key"] and tags["promotion.decision"] == "promoted"
    run = client.get_run(best["run_id"])
    artifacts = {a.path for a in client.list_artifacts(best["run_id"], "plots")}
    assert artifacts == {
        f"plots/{n}.png"
        for n in ("roc_curve", "precision_recall_curve", "calibration_curve", "confusion_matrix", "feature_importance")
    }
    assert run.data.metrics["validation_roc_auc_30"] == pytest.approx(best["validation"]["roc_auc_30"])


def test_gate_keeps_a_better_champion_and_replaces_a_worse_one(clean_db: Any, tracking: str) -> None:
    test = read_clean(clean_db, "test")
    score = _score_on(test)
    client = MlflowClient(tracking, tracking)

    dummy = _log(_dummy(clean_db))
    first = promote_if_better(client, dummy, score(dummy), score)
    assert first.promoted and champion_version(client) == dummy

    promotion = train_job(str(clean_db.url), tracking, FAST, log=lambda _: None)["promotion"]
    assert promotion["promoted"], promotion["reason"]  # a real model beats the class-mix dummy
    assert promotion["previous_champion"] == dummy
    assert champion_version(client) == promotion["version"]

    worse = _log(_dummy(clean_db))
    decision = promote_if_better(client, worse, score(worse), score)
    assert not decision.promoted
    assert champion_version(client) == promotion["version"]  # unchanged
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == worse
    tags = client.get_model_version(MODEL_NAME, worse).tags
    assert tags["promotion.decision"] == "kept previous champion"
    assert tags["promotion.previous_champion"] == promotion["version"]
    assert "does not beat champion" in tags["promotion.reason"]


def test_rollback_and_listing(clean_db: Any, tracking: str) -> None:
    client = MlflowClient(tracking, tracking)
    first = _log(_dummy(clean_db))
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, first)
    second = train_job(str(clean_db.url), tracking, FAST, log=lambda _: None)["promotion"]["version"]
    assert champion_version(client) == second

    assert rollback(client, first) == second
    assert champion_version(client) == first
    assert "champion was v" in client.get_model_version(MODEL_NAME, first).tags["rollback.reason"]
    with pytest.raises(RegistryError, match=r"has no version 99 \(known versions: 1, 2\)"):
        rollback(client, "99")

    listed = {v.version: v for v in list_versions(client)}
    assert listed[first].aliases == (CHAMPION,)
    assert listed[second].aliases == (CHALLENGER,)
    assert listed[second].family in {"logistic_regression", "hist_gradient_boosting"}
    assert "roc_auc_30" in listed[second].metrics


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model families"):
        TrainConfig(families=("xgboost",))


def test_max_trials_caps_the_trials_whatever_the_time_budget(clean_db: Any) -> None:
    """With a cap the run does not depend on the machine's speed: two trials, though the budget allows many."""
    train, validation = (read_clean(clean_db, split) for split in ("train", "validation"))
    xy = [(model_input(f), f[schema.TARGET].astype(str)) for f in (train, validation)]
    lines: list[str] = []
    config = TrainConfig(families=("logistic_regression",), max_trials=2)
    winner = fit_family("logistic_regression", xy[0], xy[1], config, budget_seconds=3_600, log=lines.append)
    assert winner.trials == 2
    assert [line.split(" {")[0].strip() for line in lines if " trial " in line] == [
        "logistic_regression trial 1",
        "logistic_regression trial 2",
    ]


def _train_validation(clean_db: Any) -> list[tuple[Any, Any]]:
    frames = (read_clean(clean_db, split) for split in ("train", "validation"))
    return [(model_input(f), f[schema.TARGET].astype(str)) for f in frames]


def test_the_chosen_trial_is_refitted_on_train_and_validation(clean_db: Any) -> None:
    """Everything is chosen with the train-only fit (trial, threshold, calibration); the model kept is the same
    parameters fitted on train + validation."""
    import pandas as pd

    from readmission.evaluation import best_f1_threshold, classification_metrics
    from readmission.modeling import logistic_regression

    (x_train, y_train), (x_val, y_val) = _train_validation(clean_db)
    config = TrainConfig(families=("logistic_regression",), max_trials=1, calibration_tolerance=10.0)
    winner = fit_family("logistic_regression", (x_train, y_train), (x_val, y_val), config, 3_600, log=print)
    train_only = logistic_regression(**winner.params).fit(x_train, y_train)
    both = logistic_regression(**winner.params).fit(pd.concat([x_train, x_val]), pd.concat([y_train, y_val]))
    assert winner.refit and not winner.calibrated
    np.testing.assert_allclose(risk_of(winner.model, x_val)[0], risk_of(both, x_val)[0], atol=1e-12)
    assert np.abs(risk_of(winner.model, x_val)[1] - risk_of(train_only, x_val)[1]).max() > 1e-6
    assert winner.validation == classification_metrics(y_val, *risk_of(train_only, x_val))
    early = (y_val == schema.POSITIVE_LABEL).to_numpy().astype(int)
    assert winner.threshold == best_f1_threshold(early, risk_of(train_only, x_val)[1])
    kept = fit_family("logistic_regression", (x_train, y_train), (x_val, y_val), replace(config, refit=False), 3_600)
    assert not kept.refit
    np.testing.assert_allclose(risk_of(kept.model, x_val)[0], risk_of(train_only, x_val)[0], atol=1e-12)


def test_a_recalibrated_winner_is_not_refitted(clean_db: Any) -> None:
    """Its calibrator was fitted on validation: fitting the model again on validation would void it."""
    from sklearn.calibration import CalibratedClassifierCV

    train, validation = _train_validation(clean_db)
    config = TrainConfig(families=("logistic_regression",), max_trials=1, calibration_tolerance=-1.0)
    winner = fit_family("logistic_regression", train, validation, config, 3_600)
    assert winner.calibrated and not winner.refit and isinstance(winner.model, CalibratedClassifierCV)
    from readmission.evaluation import best_f1_threshold, classification_metrics
    from readmission.modeling import logistic_regression

    uncalibrated = logistic_regression(**winner.params).fit(*train)
    early = (validation[1] == schema.POSITIVE_LABEL).to_numpy().astype(int)
    # The threshold belongs to the model kept (was: the uncalibrated trial's, on another risk scale)...
    assert winner.threshold == best_f1_threshold(early, risk_of(winner.model, validation[0])[1])
    # ...while the metrics that choose among families stay out of sample (the calibrator saw validation).
    assert winner.validation == classification_metrics(validation[1], *risk_of(uncalibrated, validation[0]))


def test_a_candidate_run_says_whether_it_was_refitted_and_its_threshold(tracking: str) -> None:
    """The Airflow path rebuilds the winner from its run; runs logged before #20 have neither tag nor metric."""
    from readmission.steps import _candidate_summary

    client = MlflowClient(tracking, tracking)
    runs = {}
    for name, tags, metrics in (
        ("before #20", {}, {}),
        ("refitted", {"refit": "True"}, {"chosen_threshold_30": 0.17}),
    ):
        with mlflow.start_run(run_name=name) as run:
            mlflow.set_tags({"model_family": "logistic_regression", "candidate_model_uri": "models:/m/1", **tags})
            mlflow.log_metrics({"validation_roc_auc_30": 0.6, "test_roc_auc_30": 0.6, **metrics})
        runs[name] = _candidate_summary(client.get_run(run.info.run_id), reused=False)
    assert (runs["before #20"]["refit"], runs["before #20"]["threshold"]) == (False, None)
    assert (runs["refitted"]["refit"], runs["refitted"]["threshold"]) == (True, 0.17)


class _SlowFamily:
    """A family whose every trial takes 0.6 s (a sleeping step before a dummy model): the budget's arithmetic,
    not the machine's speed, decides how many trials start."""

    @staticmethod
    def candidates(seed: int) -> Iterator[tuple[dict[str, Any], Pipeline]]:
        import time as clock

        def slow(x: Any) -> Any:
            clock.sleep(0.6)
            return x

        for trial in range(5):
            steps = [("wait", FunctionTransformer(slow)), ("model", DummyClassifier(strategy="prior"))]
            yield {"trial": trial}, Pipeline(steps)


def test_a_trial_that_would_overrun_the_budget_is_not_started(clean_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: a trial started whenever the budget was not yet spent, so the last one ran past it (599 s seen)."""
    from readmission import training

    monkeypatch.setitem(training.FAMILIES, "slow", _SlowFamily)
    train, validation = (read_clean(clean_db, split) for split in ("train", "validation"))
    xy = [(model_input(f).head(200), f[schema.TARGET].astype(str).head(200)) for f in (train, validation)]
    lines: list[str] = []
    config = TrainConfig(families=("logistic_regression",), refit=False)
    # Each trial takes >= 1.2 s (fit and validation predictions each sleep 0.6 s): after one, 0.8 s of 2 remain.
    winner = fit_family("slow", xy[0], xy[1], config, budget_seconds=2.0, log=lines.append)
    assert winner.trials == 1, lines
    assert re.match(r"  slow: no trial 2: the slowest so far took \d+ s, \d+ s remain$", lines[-1]), lines


def test_the_job_budget_keeps_a_reserve_for_what_follows_the_trials() -> None:
    from readmission.steps import trial_share

    assert trial_share(240, 3) == pytest.approx(64.0)  # 48 s (a fifth) reserved
    assert trial_share(1_000, 2) == pytest.approx(470.0)  # the reserve is 60 s at most


def test_the_importance_sample_is_cut_to_its_time(clean_db: Any) -> None:
    from readmission.training import importance_sample

    validation = model_input(read_clean(clean_db, "validation"))
    model = _dummy(clean_db)
    small = TrainConfig(importance_rows=3_000, importance_seconds=1e-6)
    large = TrainConfig(importance_rows=3_000, importance_seconds=1e6)
    assert len(importance_sample(model, validation, small)) == min(300, len(validation))
    assert len(importance_sample(model, validation, large)) == min(3_000, len(validation))


def test_model_inputs_exclude_identifiers_and_target() -> None:
    assert not {"encounter_id", "patient_nbr", schema.TARGET} & set(schema.MODEL_INPUT_NAMES)


def test_shared_names_and_the_api_settings_do_not_import_mlflow() -> None:
    """One dependency-free module holds the model's names: reading them (or the API's settings) loads no MLflow."""
    import subprocess
    import sys

    code = (
        "import sys; import readmission.names, inference_api.settings, readmission.cli.model_commands; "
        "heavy = sorted(m for m in ('mlflow', 'sklearn') if m in sys.modules); print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@settings(max_examples=20, deadline=None)
@given(max_rows=st.integers(1, 5_000), seed=st.integers(0, 2**20))
def test_the_fit_sample_cuts_train_and_validation_to_whole_patients_and_never_test(
    sample_frame: pd.DataFrame, max_rows: int, seed: int
) -> None:
    splits = {s: sample_frame[sample_frame["split"] == s] for s in ("train", "validation", "test")}
    cut, note = fit_sample(splits, max_rows, seed)
    assert cut["test"] is splits["test"]
    if len(splits["train"]) <= max_rows:
        assert cut == splits and note == ""
        return
    assert "test split whole" in note
    for name in ("train", "validation"):
        kept = set(cut[name]["patient_nbr"])
        whole = splits[name][splits[name]["patient_nbr"].isin(kept)]
        assert len(whole) == len(cut[name])  # every kept patient with all its rows
    share = max_rows / len(splits["train"])
    assert len(cut["train"]) == pytest.approx(max_rows, abs=4 * (share * len(splits["train"])) ** 0.5 + 40)
    again, _ = fit_sample(splits, max_rows, seed)
    assert all(again[s].index.equals(cut[s].index) for s in cut)  # the same patients on every run


@pytest.fixture(scope="module")
def sample_frame(clean_db: Any) -> pd.DataFrame:
    return read_clean(clean_db)


def test_a_large_train_split_is_fitted_on_a_tagged_patient_sample(clean_db: Any, tracking: str) -> None:
    """Issue #24: ten times the data fitted every row (9.6 GB, 205 s for one logistic-regression refit)."""
    lines: list[str] = []
    config = replace(FAST, families=("logistic_regression",), max_fit_rows=1_500)
    job = train_job(str(clean_db.url), tracking, config, log=lines.append)
    assert any("fitting on a patient sample: train" in line for line in lines), lines
    client = MlflowClient(tracking, tracking)
    note = client.get_run(job["best"]["run_id"]).data.tags["data.fit_sample"]
    train_rows = int(client.get_model_version(MODEL_NAME, "1").tags["data.train_rows"])
    assert note.startswith("train ") and f"of {train_rows:,} rows" in note
    assert client.get_model_version(MODEL_NAME, "1").tags["data.fit_sample"] == note
    # Refitted or not, the kept model was fitted on the sample, not on every row (the run's fit_rows).
    fitted = client.get_run(job["best"]["run_id"]).data.metrics["fit_rows"]
    whole = len(read_clean(clean_db, "train")) + len(read_clean(clean_db, "validation"))
    assert 0 < fitted < 0.6 * whole, (fitted, whole)
    assert job["best"]["test"]  # scored on the whole test split


@pytest.mark.parametrize("seed", [3 ^ 0x5A3F, 42 ^ 0x5A3F, 0, 3])
def test_no_train_seed_makes_the_fit_sample_the_splits_own_draw(sample_frame: pd.DataFrame, seed: int) -> None:
    """Review of #24: the sample's draw used ``seed ^ 0x5A3F``; with the split seed (3 for this CLEAN) as that
    value it was the split's own draw, and train (split draws above 0.3) came out nearly empty."""
    splits = {s: sample_frame[sample_frame["split"] == s] for s in ("train", "validation", "test")}
    cut, _ = fit_sample(splits, len(splits["train"]) // 2, seed)
    assert len(cut["train"]) == pytest.approx(len(splits["train"]) / 2, rel=0.15)
    assert len(cut["validation"]) == pytest.approx(len(splits["validation"]) / 2, rel=0.25)
    with pytest.raises(ValueError, match="at least 1"):
        fit_sample(splits, 0, seed)
