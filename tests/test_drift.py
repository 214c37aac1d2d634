"""The reference profile and PSI (readmission.drift): on the real file's splits, as properties, and as training's
artifact read back from MLflow."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from readmission import schema
from readmission.clean import read_clean
from readmission.drift import (
    DEFAULT_PSI_THRESHOLD,
    MISSING_BIN,
    NUMERIC,
    UNKNOWN_BIN,
    DriftError,
    build_profile,
    check_profile,
    floored,
    load_profile,
    psi,
    served_fractions,
    served_frame,
)
from readmission.modeling import model_input
from readmission.names import MODEL_NAME, REFERENCE_PROFILE_ARTIFACT
from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig, prepare_tracking

SHIFT_AGE = "[70-80)"
EMERGENCY = 1
# Inputs with no reason to move when only old emergency patients are served (measured: all below 0.01).
UNRELATED = ("gender", "change", "diabetesMed", "metformin", "insulin", "number_outpatient", "prior_encounters")


def _request_dicts(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """CLEAN rows as the prediction log stores them: validated by the request model, then dumped."""
    records = model_input(frame).to_dict("records")
    cleaned = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    return [schema.EncounterFeatures.model_validate(r).model_dump() for r in cleaned]


@pytest.fixture(scope="module")
def train_profile(real_clean: pd.DataFrame) -> dict[str, Any]:
    return build_profile(model_input(real_clean[real_clean["split"] == "train"]))


@pytest.fixture(scope="module")
def served_test(real_clean: pd.DataFrame) -> list[dict[str, Any]]:
    return _request_dicts(real_clean[real_clean["split"] == "test"])


def test_the_profile_covers_every_model_input_and_survives_json(
    train_profile: dict[str, Any], real_clean: pd.DataFrame
) -> None:
    assert train_profile["format"] == 1
    assert train_profile["rows"] == int((real_clean["split"] == "train").sum())
    assert list(train_profile["inputs"]) == list(schema.MODEL_INPUT_NAMES)
    assert json.loads(json.dumps(train_profile)) == train_profile
    for name, entry in train_profile["inputs"].items():
        assert len(entry["bins"]) == len(entry["fractions"]) and sum(entry["fractions"]) == pytest.approx(1.0)
        col = schema.COLUMNS_BY_NAME.get(name)
        if col is not None and col.kind in (schema.Kind.CATEGORY, schema.Kind.CODED):
            assert entry["bins"] == [*col.levels, UNKNOWN_BIN, MISSING_BIN], name
    time_in_hospital = train_profile["inputs"]["time_in_hospital"]
    assert time_in_hospital["kind"] == NUMERIC and time_in_hospital["edges"] == sorted(set(time_in_hospital["edges"]))
    assert train_profile["inputs"]["number_emergency"]["bins"][0] == "<= 0"  # the mass at 0 is a bin of its own


def test_the_test_split_served_through_the_request_model_does_not_drift(
    train_profile: dict[str, Any], served_test: list[dict[str, Any]]
) -> None:
    values = psi(train_profile, served_frame(served_test))
    assert set(values) == set(schema.MODEL_INPUT_NAMES)
    assert max(values.values()) < 0.05, sorted(values.items(), key=lambda kv: -kv[1])[:5]


def test_old_emergency_patients_only_drift_in_age_and_admission_type(
    train_profile: dict[str, Any], served_test: list[dict[str, Any]]
) -> None:
    shifted = [r for r in served_test if r["admission_type_id"] == EMERGENCY and r["age"] == SHIFT_AGE]
    assert len(shifted) > 1_000
    values = psi(train_profile, served_frame(shifted))
    assert values["age"] > DEFAULT_PSI_THRESHOLD and values["admission_type_id"] > DEFAULT_PSI_THRESHOLD
    assert all(values[name] < 0.05 for name in UNRELATED), {name: values[name] for name in UNRELATED}


# --- properties, on small frames built like the prediction log's rows ----------------------------------------

_BASE = schema.EXAMPLE_ENCOUNTERS["Heart failure, first visit"]
_ROW = st.fixed_dictionaries(
    {
        "age": st.sampled_from(schema.AGE_BRACKETS),
        "race": st.none() | st.sampled_from(schema.column("race").levels),
        "admission_type_id": st.sampled_from([int(v) for v in schema.ADMISSION_TYPES]),
        "diag_1": st.none() | st.sampled_from(["428", "250.83", "V57", "E878", "8", "715", "820"]),
        "time_in_hospital": st.integers(1, 14),
        "num_lab_procedures": st.integers(0, 150),
        "prior_encounters": st.integers(0, 30),
    }
)
_ROWS = st.lists(_ROW, min_size=1, max_size=60).map(lambda rows: [{**_BASE, **row} for row in rows])


@settings(max_examples=40, deadline=None)
@given(rows=_ROWS)
def test_the_profile_of_a_sample_against_itself_is_zero(rows: list[dict[str, Any]]) -> None:
    frame = served_frame(rows)
    values = psi(build_profile(frame), frame)
    assert all(0.0 <= v < 1e-9 for v in values.values()), values


@settings(max_examples=40, deadline=None)
@given(reference=_ROWS, served=_ROWS)
def test_psi_is_nonnegative_and_the_direct_formula(
    reference: list[dict[str, Any]], served: list[dict[str, Any]]
) -> None:
    profile, frame = build_profile(served_frame(reference)), served_frame(served)
    values = psi(profile, frame)
    actual = served_fractions(profile, frame)
    for name, entry in profile["inputs"].items():
        e, a = floored(entry["fractions"]), floored(actual[name])
        assert values[name] >= 0.0
        assert values[name] == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=0, abs=1e-12), name


@settings(max_examples=40, deadline=None)
@given(rows=_ROWS, below=st.integers(1, 1_000), above=st.integers(1, 1_000))
def test_values_outside_the_training_range_land_in_the_end_bins(
    rows: list[dict[str, Any]], below: int, above: int
) -> None:
    profile = build_profile(served_frame(rows))
    seen = [r["num_lab_procedures"] for r in rows]
    outside = [
        {**rows[0], "num_lab_procedures": min(seen) - below},
        {**rows[0], "num_lab_procedures": max(seen) + above},
    ]
    fractions = served_fractions(profile, served_frame(outside))["num_lab_procedures"]
    assert fractions[0] == 0.5 and fractions[-2] == 0.5 and fractions[-1] == 0.0  # the last bin is missing


def test_a_level_outside_the_contract_and_a_missing_value_have_bins_of_their_own() -> None:
    rows = [dict(_BASE), {**_BASE, "admission_type_id": 99, "race": None}]
    profile = build_profile(served_frame([_BASE]))
    fractions = served_fractions(profile, served_frame(rows))
    bins = profile["inputs"]["admission_type_id"]["bins"]
    assert fractions["admission_type_id"][bins.index(UNKNOWN_BIN)] == 0.5
    assert fractions["race"][profile["inputs"]["race"]["bins"].index(MISSING_BIN)] == 0.5


def test_errors_name_the_format_or_the_input() -> None:
    frame = served_frame([_BASE])
    profile = build_profile(frame)
    with pytest.raises(DriftError, match="unknown format 2"):
        psi({**profile, "format": 2}, frame)
    with pytest.raises(DriftError, match="model input race: unknown kind 'histogram'"):
        check_profile({**profile, "inputs": {**profile["inputs"], "race": {"kind": "histogram"}}})
    with pytest.raises(DriftError, match=r"served frame lacks the model input.s. age, insulin"):
        psi(profile, frame.drop(columns=["age", "insulin"]))
    with pytest.raises(DriftError, match="no rows"):
        psi(profile, frame.iloc[:0])
    with pytest.raises(DriftError, match=r"training frame lacks the model input.s. prior_encounters"):
        build_profile(frame.drop(columns="prior_encounters"))
    without_age = {k: v for k, v in _BASE.items() if k != "age"}
    with pytest.raises(DriftError, match=r"logged inputs #1 lack the model input.s. age"):
        served_frame([_BASE, without_age])


# --- the training artifact -----------------------------------------------------------------------------------


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[str]:
    """A fresh local MLflow store (SQLite metadata, artifacts in a folder)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_tracking(uri, (tmp_path / "artifacts").as_uri())
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_training_logs_the_train_split_profile_and_load_profile_reads_it(tmp_path: Path, tracking: str) -> None:
    clean = build_synthetic_clean(tmp_path / "clean", rows=2_000, seed=5, split_seed=3)
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=60, max_trials=1, importance_rows=300)
    version = train_job(str(clean.url), tracking, config, log=lambda _: None)["promotion"]["version"]
    client = MlflowClient(tracking, tracking)
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    expected = build_profile(model_input(read_clean(clean, "train")))
    assert load_profile(tracking, run_id) == expected
    assert load_profile(client, run_id) == expected
    with mlflow.start_run() as bare:  # a version's run from before profiles were logged
        pass
    assert load_profile(client, bare.info.run_id) is None
    with mlflow.start_run() as other:
        mlflow.log_dict({"format": 2}, REFERENCE_PROFILE_ARTIFACT)
    with pytest.raises(DriftError, match="unknown format 2"):
        load_profile(client, other.info.run_id)
