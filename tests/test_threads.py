"""The thread cap of model calls in a service: the pod's CPU limit read from cgroup files, and the OpenMP
pool that scikit-learn sizes from the node's CPUs held to it during a call (real threadpoolctl, real libgomp)."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

from readmission.serving import Predictor
from readmission.threads import available_cpus, cgroup_cpu_limit, limit_n_jobs, thread_cap


def _cgroup(root: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (root / "cpu.max").write_text(v2)
    if v1 is not None:
        (root / "cpu").mkdir(exist_ok=True)
        (root / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (root / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return root


@pytest.mark.parametrize(
    ("v2", "v1", "cpus"),
    [
        ("max 100000\n", None, None),  # no limit
        ("150000 100000\n", None, 2),  # a Kubernetes limit of 1500m
        ("50000 100000\n", None, 1),  # 500m: at least one thread
        ("200000 100000\n", None, 2),
        (None, ("-1", "100000"), None),  # cgroup v1, unlimited
        (None, ("300000", "100000"), 3),  # cgroup v1
        ("garbage", None, None),
        ("100000 0", None, None),
        (None, None, None),  # no cgroup files at all (macOS, a bare process)
    ],
)
def test_the_cgroup_cpu_limit_is_read_from_either_cgroup_version(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, cpus: int | None
) -> None:
    assert cgroup_cpu_limit(_cgroup(tmp_path / "cg", v2, v1)) == cpus


@given(quota=st.integers(1, 10**8), period=st.integers(1_000, 10**6))
def test_any_quota_gives_its_cpus_rounded_up_and_never_more_than_the_affinity(quota: int, period: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = _cgroup(Path(folder), f"{quota} {period}\n")
        assert cgroup_cpu_limit(root) == max(1, math.ceil(quota / period))
        assert 1 <= available_cpus(root) <= len(os.sched_getaffinity(0))
        assert available_cpus(root) == min(len(os.sched_getaffinity(0)), max(1, math.ceil(quota / period)))


class _RecordingModel:
    """A model without a compiled path whose predict_proba records the OpenMP pools' sizes during the call."""

    classes_ = np.array(["<30", ">30", "NO"], dtype=object)

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def predict_proba(self, frame: Any) -> np.ndarray:
        self.seen.append([int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "openmp"])
        return np.full((len(frame), 3), 1 / 3)


def test_the_pipeline_path_runs_with_the_cap_and_only_during_the_call(example_row: dict[str, Any]) -> None:
    import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime, as a loaded model has)

    ambient = [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "openmp"]
    capped, free = _RecordingModel(), _RecordingModel()
    Predictor(capped, threads=1).predict_proba([example_row])
    Predictor(free).predict_proba([example_row])
    assert capped.seen[0] and capped.seen[0] == [1] * len(capped.seen[0])
    assert free.seen[0] == ambient  # no cap: the pools as they were (libgomp's default: every CPU)
    if os.environ.get("OMP_NUM_THREADS") is None and len(os.sched_getaffinity(0)) > 1:
        assert ambient != capped.seen[0]  # so the cap above changed something
    with pytest.raises(ValueError, match="at least 1"):
        Predictor(capped, threads=0)


@pytest.fixture
def example_row() -> dict[str, Any]:
    from readmission import schema

    example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
    return schema.EncounterFeatures.model_validate(example).model_dump(exclude={schema.ENCOUNTER_ID})


def test_joblib_users_inside_a_calibrated_pipeline_get_the_cap_and_answer_the_same() -> None:
    """Review of #24: the random forest (n_jobs=-1) predicts on joblib threads, which threadpoolctl does not
    cap; the cap is set on the estimator itself, wherever it sits (here behind a frozen calibration)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    x, y = rng.random((300, 4)), rng.integers(0, 2, 300)
    forest = RandomForestClassifier(n_estimators=8, n_jobs=-1, random_state=0)
    model = CalibratedClassifierCV(FrozenEstimator(Pipeline([("model", forest)]).fit(x, y))).fit(x, y)
    before = model.predict_proba(x)
    assert limit_n_jobs(model, 1) == ["RandomForestClassifier"] and forest.n_jobs == 1
    np.testing.assert_array_equal(model.predict_proba(x), before)
    assert limit_n_jobs(model, 1) == []  # already within the cap


def test_a_cap_at_or_above_every_pool_costs_nothing_per_call() -> None:
    import sklearn.ensemble  # noqa: F401

    largest = max(int(p["num_threads"]) for p in threadpool_info())
    assert thread_cap(largest)().__class__ is nullcontext
    assert thread_cap(None)().__class__ is nullcontext
    if largest > 1:
        assert thread_cap(1)().__class__ is not nullcontext
