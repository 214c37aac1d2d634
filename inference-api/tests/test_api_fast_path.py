"""The compiled fast path is proven at load: if its probabilities differ from the pipeline's, the service
serves the pipeline path instead and counts the mismatch (real registry, real uvicorn)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from apisupport import ApiServer, Registry, settings_for, wait_until
from threadpoolctl import threadpool_info

from inference_api.app import create_app
from inference_api.model_manager import ModelSource, PipelinePredictor
from readmission import schema
from readmission.serving import Predictor, rows_to_frame


def _first_tree_leaves(model: Any) -> np.ndarray:
    """The node array of the first tree of the fitted gradient-boosting estimator inside ``model``."""
    seen: list[Any] = [model]
    while seen:
        obj = seen.pop()
        if hasattr(obj, "_predictors"):
            return obj._predictors[0][0].nodes
        seen.extend(step for _, step in getattr(obj, "steps", []))
        seen.extend(v for k, v in vars(obj).items() if k.endswith("_") and hasattr(v, "__dict__"))
    raise AssertionError("no fitted gradient-boosting trees in the model")


class TamperedSource(ModelSource):
    """Compiles the fast path as usual, then changes the pipeline's first tree so the two disagree."""

    def predictor(self, model: Any) -> Predictor:
        predictor = super().predictor(model)
        nodes = _first_tree_leaves(model)
        nodes["value"][nodes["is_leaf"] == 1] += 0.5
        return predictor


class TamperedThresholdSource(ModelSource):
    """Compiles the fast path, then moves one split threshold of the pipeline's first tree (as the issue
    asks): every row now goes right at that split, so the pipeline's answers change and the copy does not."""

    def predictor(self, model: Any) -> Predictor:
        predictor = super().predictor(model)
        nodes = _first_tree_leaves(model)
        numeric = (nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)
        nodes["num_threshold"][int(numeric.nonzero()[0][0])] = -1e300
        return predictor


@contextlib.contextmanager
def _serving_the_pipeline(source: type[ModelSource], registry: Registry, tmp_path: Path) -> Iterator[ApiServer]:
    """A live API whose models come through ``source``, once ready; it must serve the pipeline path."""
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    app = create_app(settings, lambda: source(registry.uri, settings.model_name, settings.model_alias))
    with ApiServer(settings, app=app) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        assert httpx.get(f"{api.url}/model").json()["prediction_path"] == "pipeline"
        yield api


@pytest.mark.parametrize("source", [TamperedSource, TamperedThresholdSource], ids=["leaf-values", "threshold"])
def test_a_fast_path_that_disagrees_with_the_pipeline_is_not_served(
    source: type[ModelSource], registry: Registry, tmp_path: Path
) -> None:
    with _serving_the_pipeline(source, registry, tmp_path) as api:
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "inference_model_fast_path_mismatch_total 1.0" in metrics
        assert "inference_model_pipeline_fallback 1.0" in metrics
        assert 'inference_model_prediction_path{path="pipeline"} 1.0' in metrics
        example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
        served = httpx.post(f"{api.url}/predict", json=example).json()["probabilities"]
        model = api.app.state.manager.current.predictor.model
        row = schema.EncounterFeatures.model_validate(example).model_dump()
        expected = dict(
            zip([str(c) for c in model.classes_], model.predict_proba(rows_to_frame([row]))[0], strict=True)
        )
        assert served == pytest.approx(expected, abs=1e-12)  # the (tampered) pipeline answered


def test_an_untouched_model_keeps_its_fast_path(registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        assert httpx.get(f"{api.url}/model").json()["prediction_path"] in {
            "compiled",
            "compiled-input",
            "compiled-calibrated",
        }
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "inference_model_fast_path_mismatch_total 0.0" in metrics
        assert "inference_model_pipeline_fallback 0.0" in metrics
        assert 'inference_model_prediction_path{path="pipeline"} 0.0' in metrics


class BrokenCompilerSource(ModelSource):
    """Compiling the fast path raises, as a scikit-learn release that renames a private attribute would."""

    def predictor(self, model: Any) -> Predictor:
        raise AttributeError("'HistGradientBoostingClassifier' object has no attribute '_predictors'")


def test_a_fast_path_that_cannot_be_built_falls_back_to_the_pipeline(registry: Registry, tmp_path: Path) -> None:
    """Before: the exception failed the whole load, so a new pod never became ready although the model works."""
    with _serving_the_pipeline(BrokenCompilerSource, registry, tmp_path) as api:
        example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
        assert httpx.post(f"{api.url}/predict", json=example).status_code == 200
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "inference_model_pipeline_fallback 1.0" in metrics


class NoCompiledPathSource(ModelSource):
    """A champion whose family has no compiled path: the predictor runs the pipeline itself (no fallback)."""

    def predictor(self, model: Any) -> Predictor:
        return PipelinePredictor(model, threads=self.threads)


def _openmp_threads() -> list[int]:
    return [int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "openmp"]


def test_a_champion_without_a_compiled_path_is_shown_and_its_thread_pools_capped(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #24: such a champion served like a peer (several times slower) with nothing saying so, and its
    OpenMP pool sized to every CPU of the node instead of the pod's."""
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    app = create_app(settings, lambda: NoCompiledPathSource(registry.uri, settings.model_name, settings.model_alias, 1))
    with caplog.at_level(logging.WARNING, logger="inference_api"), ApiServer(settings, app=app) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        assert httpx.get(f"{api.url}/model").json()["prediction_path"] == "pipeline"
        metrics = httpx.get(f"{api.url}/metrics").text
        assert 'inference_model_prediction_path{path="pipeline"} 1.0' in metrics
        assert 'inference_model_prediction_path{path="compiled"} 0.0' in metrics
        assert "inference_model_pipeline_fallback 0.0" in metrics  # not a failed check: the family has none
        model = api.app.state.manager.current.predictor.model
        seen: list[list[int]] = []
        original = model.predict_proba
        model.predict_proba = lambda frame: (seen.append(_openmp_threads()), original(frame))[1]
        example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
        assert httpx.post(f"{api.url}/predict", json=example).status_code == 200
    assert seen and all(threads == [1] * len(threads) for threads in seen), seen
    assert seen[0], "no OpenMP pool loaded: the cap was not exercised"
    assert any("has no compiled path" in r.getMessage() and "capped at 1" in r.getMessage() for r in caplog.records)
