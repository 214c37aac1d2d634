"""The orchestration steps are idempotent: a retried task or a re-run DAG never trains, registers or
promotes twice for the same training job."""

from __future__ import annotations

from pathlib import Path

from readmission import steps
from readmission.registry import CHAMPION, MODEL_NAME
from readmission.synthetic import build_synthetic_clean


def test_retried_training_and_selection_reuse_what_the_job_already_did(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    build_synthetic_clean(tmp_path, rows=3_000, seed=3)
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    family = "logistic_regression"

    first = steps.train_family(clean_url, tracking_uri, family, "job-1", 1, artifact_location=artifacts)
    again = steps.train_family(clean_url, tracking_uri, family, "job-1", 1, artifact_location=artifacts)
    assert first["reused"] is False and again["reused"] is True
    assert again["run_id"] == first["run_id"] and again["validation"] == first["validation"]

    promoted = steps.select_and_promote(clean_url, tracking_uri, "job-1", [family], artifact_location=artifacts)
    retried = steps.select_and_promote(clean_url, tracking_uri, "job-1", [family], artifact_location=artifacts)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")] == ["1"]
    assert promoted["version"] == retried["version"] == "1"
    assert promoted["promoted"] and retried["promoted"] and retried["reason"] == "no champion yet"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    # The version is the model the training task logged, registered as it is (not logged a second time).
    assert client.get_model_version(MODEL_NAME, "1").source == first["model_uri"]
    assert len(client.search_logged_models(experiment_ids=[client.get_run(first["run_id"]).info.experiment_id])) == 1

    # A new job trains again and registers a new version, gated against the champion.
    steps.train_family(clean_url, tracking_uri, family, "job-2", 1, artifact_location=artifacts)
    second = steps.select_and_promote(clean_url, tracking_uri, "job-2", [family], artifact_location=artifacts)
    assert second["version"] == "2" and second["champion_version"] in {"1", "2"}
    assert ("beats champion v1" in second["reason"]) == second["promoted"]


def test_selection_names_a_family_that_was_not_trained(tmp_path: Path) -> None:
    import pytest

    build_synthetic_clean(tmp_path, rows=1_500, seed=4)
    clean_url = f"sqlite:///{tmp_path / 'clean.db'}"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match="no finished random_forest candidate for training job job-9"):
        steps.select_and_promote(clean_url, tracking_uri, "job-9", ["random_forest"])
