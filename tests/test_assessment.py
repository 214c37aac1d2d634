"""The honest multi-split estimate: champion chosen on validation only, mean +- sd over seeds, the CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from readmission.assessment import (
    CHAMPION,
    EVALUATION_SEEDS,
    REPORTED_METRICS,
    SplitResult,
    evaluate_seeds,
    format_summary,
    mean_sd,
    summary,
)
from readmission.clean import SplitSpec, assign_split, read_raw
from readmission.cli.quality_commands import DEFAULT_SEEDS, parse_seeds, seed_warnings, write_results
from readmission.db import create_db_engine
from readmission.errors import EmptyStoreError, ReadmissionError
from readmission.raw import SourceFile, load_raw_batches
from readmission.synthetic import write_synthetic_csv
from readmission.training import TrainConfig
from test_cli import FAST_TRAINING, _cli

FAST = TrainConfig(families=("logistic_regression", "hist_gradient_boosting"), time_budget_seconds=60, max_trials=1)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("assessment")
    engine = create_db_engine(f"sqlite:///{folder / 'raw.db'}")
    load_raw_batches(engine, SourceFile.read(write_synthetic_csv(folder / "data.csv", rows=4_000, seed=3)))
    return read_raw(engine)


def test_each_seed_has_its_own_patient_grouped_split(synthetic_raw: pd.DataFrame) -> None:
    patients = synthetic_raw["patient_nbr"]
    splits = {seed: assign_split(patients, SplitSpec(seed=seed)) for seed in (1, 2)}
    assert (splits[1] != splits[2]).mean() > 0.2  # a different draw of patients, not the same split twice
    for labels in splits.values():  # no patient on two sides
        assert labels.groupby(patients).nunique().max() == 1


def test_the_champion_is_chosen_on_validation_and_reported_on_test(synthetic_raw: pd.DataFrame) -> None:
    lines: list[str] = []
    results = evaluate_seeds(synthetic_raw, (1, 2), FAST, log=lines.append)
    assert [(r.seed, r.family) for r in results] == [
        (1, "logistic_regression"), (1, "hist_gradient_boosting"), (1, CHAMPION),
        (2, "logistic_regression"), (2, "hist_gradient_boosting"), (2, CHAMPION),
    ]  # fmt: skip
    for seed in (1, 2):
        mine = [r for r in results if r.seed == seed]
        families, champion = mine[:-1], mine[-1]
        best = max(families, key=lambda r: r.validation["roc_auc_30"])
        assert champion.chosen_family == best.family and champion.test == best.test
    assert results[0].test != results[3].test  # the seeds' test splits differ
    assert len(lines) == 4 and all("validation" in line and "test" in line for line in lines)
    table = summary(results)
    assert list(table.index) == ["logistic_regression", "hist_gradient_boosting", CHAMPION]
    values = [r.test["roc_auc_30"] for r in results if r.family == CHAMPION]
    assert table.loc[CHAMPION, "roc_auc_30_mean"] == pytest.approx(np.mean(values))
    assert table.loc[CHAMPION, "roc_auc_30_sd"] == pytest.approx(np.std(values, ddof=1))
    assert "champion" in format_summary(table) and "+-" in format_summary(table)


def _result(seed: int, family: str, validation: float, test: float) -> SplitResult:
    metrics = dict.fromkeys(REPORTED_METRICS, test)
    return SplitResult(seed, family, {"roc_auc_30": validation}, metrics, 1.0, 1, False)


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_mean_sd_is_the_sample_mean_and_standard_deviation(values: list[float]) -> None:
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.fmean(values))
    if len(values) == 1:
        assert np.isnan(sd)  # undefined, not a reassuring 0
    else:
        assert sd == pytest.approx(np.std(values, ddof=1), abs=1e-12)


@given(st.lists(st.tuples(st.floats(0.4, 0.9), st.floats(0.4, 0.9)), min_size=2, max_size=8))
def test_summary_of_any_results_matches_the_rows_it_came_from(pairs: list[tuple[float, float]]) -> None:
    results = [_result(seed, "f", validation, test) for seed, (validation, test) in enumerate(pairs)]
    results += [_result(seed, CHAMPION, v, t) for seed, (v, t) in enumerate(pairs)]
    table = summary(results)
    for family in ("f", CHAMPION):
        assert table.loc[family, "seeds"] == len(pairs)
        assert table.loc[family, "roc_auc_30_mean"] == pytest.approx(np.mean([t for _, t in pairs]))


@pytest.mark.parametrize("text", ["1", "1,1", "a,b", "-1,2", "", "1.5,2", f"1,{2**63}"])
def test_seeds_must_be_two_or_more_distinct_whole_numbers(text: str) -> None:
    with pytest.raises(ReadmissionError, match="--seeds"):
        parse_seeds(text)


def test_seeds_accept_spaces() -> None:
    assert parse_seeds("1, 2 ,3") == (1, 2, 3)


def test_the_default_seeds_are_five_and_not_the_tuned_split() -> None:
    assert parse_seeds(DEFAULT_SEEDS) == EVALUATION_SEEDS
    assert seed_warnings(EVALUATION_SEEDS) == []
    assert [w.split(":")[0] for w in seed_warnings((1, 42))] == [
        "only 2 splits",
        "seed 42 is the split earlier choices were made on",
    ]


def test_results_are_written_as_standard_json(tmp_path: Path) -> None:
    """An undefined metric (NaN) is written as null: the standard JSON token, which every reader accepts."""
    result = _result(1, "f", 0.7, 0.6)
    result.test["calibration_slope_30"] = float("nan")
    write_results(tmp_path / "r.json", [result])
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)[0]["test"]["calibration_slope_30"] is None


def test_evaluate_command_on_raw_prints_per_seed_and_mean_sd(tmp_path: Path) -> None:
    data = write_synthetic_csv(tmp_path / "data.csv", rows=3_000, seed=5)
    env = {**FAST_TRAINING, "TRAIN_FAMILIES": "logistic_regression,hist_gradient_boosting"}
    assert _cli("load-raw", "--data-path", str(data), cwd=tmp_path).returncode == 0
    result = _cli("evaluate", "--seeds", "3,4", "--json", "out.json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "champion (" in result.stdout and "+-" in result.stdout
    assert "over 2 patient-grouped splits" in result.stdout.splitlines()[-1]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert {(r["seed"], r["family"]) for r in saved} == {
        (s, f) for s in (3, 4) for f in ("logistic_regression", "hist_gradient_boosting", CHAMPION)
    }
    assert (tmp_path / "var" / "raw.db").is_file()  # the embedded default's folder...
    assert not (tmp_path / "var" / "mlflow").exists()  # ...without an MLflow store: it registers nothing
    assert "only 2 splits" in result.stderr  # fewer than five: said, not refused


def test_evaluate_command_names_the_fix_for_an_empty_store_and_bad_settings(tmp_path: Path) -> None:
    empty = _cli("evaluate", cwd=tmp_path, env=FAST_TRAINING)
    assert empty.returncode != 0 and "run `readmission load-raw` first" in empty.stderr
    assert "Traceback" not in empty.stderr
    bad = _cli("evaluate", "--seeds", "7", cwd=tmp_path)
    assert bad.returncode != 0 and "--seeds '7'" in bad.stderr
    family = _cli("evaluate", cwd=tmp_path, env={"TRAIN_FAMILIES": "xgboost"})
    assert family.returncode != 0 and "unknown model families ['xgboost']" in family.stderr  # was: a traceback
    assert "Traceback" not in family.stderr


def test_an_unwritable_json_path_is_refused_before_the_run(tmp_path: Path) -> None:
    """Was: the tables printed after minutes of training, then a FileNotFoundError traceback and no file."""
    data = write_synthetic_csv(tmp_path / "data.csv", rows=600, seed=5)
    assert _cli("load-raw", "--data-path", str(data), cwd=tmp_path).returncode == 0
    for target, says in (("missing/out.json", "does not exist; create it first"), (".", "is a folder")):
        result = _cli("evaluate", "--json", target, cwd=tmp_path, env=FAST_TRAINING)
        assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr
        assert "evaluate: 600 RAW rows" not in result.stderr  # refused before any training


def test_too_little_data_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    data = write_synthetic_csv(tmp_path / "data.csv", rows=60, seed=5)
    assert _cli("load-raw", "--data-path", str(data), cwd=tmp_path).returncode == 0
    env = {**FAST_TRAINING, "TRAIN_FAMILIES": "hist_gradient_boosting"}
    result = _cli("evaluate", "--seeds", "1,2", cwd=tmp_path, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "load more rows" in result.stderr


def test_read_raw_refuses_an_empty_store(tmp_path: Path) -> None:
    with pytest.raises(EmptyStoreError, match="load-raw"):
        read_raw(create_db_engine(f"sqlite:///{tmp_path / 'raw.db'}"))
