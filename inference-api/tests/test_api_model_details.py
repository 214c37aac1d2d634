"""What the page's Model tab reads, read-only from MLflow: the registry's version history with the promotion gate's
decisions (GET /model/versions), the serving run's plots (GET /model/plots, /model/plots/{name}) and its global
feature importance (GET /model/importance). Real registry trained by the project's own training job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from apisupport import ApiServer, Registry, free_port, settings_for, wait_until
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from inference_api.app import create_app
from readmission import schema
from readmission.names import DECISION_TAG, IMPORTANCE_ARTIFACT, MODEL_NAME, PLOT_FILES, PLOTS_FOLDER

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    log_url = f"sqlite:///{tmp_path_factory.mktemp('details') / 'predictions.db'}"
    with TestClient(create_app(settings_for(registry.uri, log_url)), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


def _mlflow(registry: Registry) -> MlflowClient:
    return MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)


def _artifact(registry: Registry, run_id: str, path: str, folder: Path) -> bytes:
    return Path(_mlflow(registry).download_artifacts(run_id, path, str(folder))).read_bytes()


def test_the_history_lists_every_version_newest_first_with_the_gates_decision(
    client: TestClient, registry: Registry
) -> None:
    answer = client.get("/model/versions")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["name"] == MODEL_NAME and body["serving_version"] == "1" and body["total"] == 2
    assert [v["version"] for v in body["versions"]] == ["2", "1"]
    mlflow = _mlflow(registry)
    aliases = mlflow.get_registered_model(MODEL_NAME).aliases
    for listed in body["versions"]:
        stored = mlflow.get_model_version(MODEL_NAME, listed["version"])
        assert listed["run_id"] == stored.run_id and len(listed["run_id"]) == 32
        created = datetime.fromtimestamp(stored.creation_timestamp / 1000, UTC)
        assert datetime.fromisoformat(listed["created_at"].replace("Z", "+00:00")) == created
        assert listed["aliases"] == sorted(a for a, v in aliases.items() if str(v) == listed["version"])
        assert listed["decision"] == stored.tags[DECISION_TAG] and listed["reason"] == stored.tags["promotion.reason"]
        assert listed["family"] == "hist_gradient_boosting" and listed["selection_metric"] == "roc_auc_30"
        assert listed["serving"] == (listed["version"] == "1")
    first = body["versions"][1]
    # The registry fixture's first training found no champion: promoted, compared with nothing.
    assert first["decision"] == "promoted" and first["reason"] == "no champion yet"
    assert first["previous_champion"] is None and first["champion_score"] is None
    assert 0.5 < first["candidate_score"] <= 1 and "champion" in first["aliases"]
    second = body["versions"][0]
    assert second["previous_champion"] == "1" and second["champion_score"] == pytest.approx(first["candidate_score"])
    limited = client.get("/model/versions", params={"limit": 1}).json()
    assert [v["version"] for v in limited["versions"]] == ["2"] and limited["total"] == 2
    for bad in ("0", "abc", "1001"):  # was FastAPI's own {"detail": [...]}, not the project's error body
        refused = client.get("/model/versions", params={"limit": bad})
        answer = refused.json()
        assert refused.status_code == 422 and answer["error"] == "invalid_input" and answer["request_id"]
        assert answer["errors"][0]["field"] == "limit" and repr(bad) in answer["errors"][0]["message"]


def test_each_allowed_plot_is_the_serving_runs_png(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    run_id = client.get("/model").json()["run_id"]
    listing = client.get("/model/plots")
    assert listing.status_code == 200
    assert listing.json() == {"version": "1", "run_id": run_id, "plots": dict.fromkeys(PLOT_FILES, True)}
    for name, file in PLOT_FILES.items():
        answer = client.get(f"/model/plots/{name}")
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["content-type"] == "image/png" and answer.headers["x-model-version"] == "1"
        assert answer.content.startswith(PNG_SIGNATURE)
        assert answer.content == _artifact(registry, run_id, f"{PLOTS_FOLDER}/{file}", tmp_path / name)
    for name in ("roc", "precision-recall", "reliability"):  # the three, by these names
        assert name in PLOT_FILES


def test_the_importance_is_the_serving_runs_largest_first(
    client: TestClient, registry: Registry, tmp_path: Path
) -> None:
    run_id = client.get("/model").json()["run_id"]
    answer = client.get("/model/importance")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == "1" and body["run_id"] == run_id and "ROC-AUC" in body["measure"]
    logged = json.loads(_artifact(registry, run_id, IMPORTANCE_ARTIFACT, tmp_path))
    assert {f["feature"]: f["importance"] for f in body["features"]} == pytest.approx(logged)
    values = [f["importance"] for f in body["features"]]
    assert values == sorted(values, reverse=True)
    assert {f["feature"] for f in body["features"]} == set(schema.MODEL_INPUT_NAMES)


@pytest.mark.parametrize("name", ["secret", "roc_curve.png", "ROC", "...", "plots", "mlflow.db"])
def test_a_plot_name_outside_the_allow_list_is_404_naming_the_allowed_ones(client: TestClient, name: str) -> None:
    answer = client.get(f"/model/plots/{name}")
    assert answer.status_code == 404 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["error"] == "not_found" and body["request_id"]
    assert all(allowed in body["message"] for allowed in PLOT_FILES)
    assert body["errors"] == [{"field": "name", "message": body["message"], "allowed": list(PLOT_FILES)}]


@pytest.mark.parametrize(
    "path", ["/model/plots/../../mlflow.db", "/model/plots/..%2F..%2Fmlflow.db", "/model/plots/%2e%2e%2fmlflow.db"]
)
def test_a_path_never_reaches_mlflow(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert not answer.content.startswith((PNG_SIGNATURE, b"SQLite"))


def test_without_a_model_plots_and_importance_are_503_and_the_history_answers(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty-mlflow.db'}"
    with TestClient(create_app(settings_for(empty, f"sqlite:///{tmp_path / 'log.db'}"))) as c:
        wait_until(lambda: "has no `champion`" in c.get("/health/ready").text, what="a registry check")
        for path in ("/model/plots", "/model/plots/roc", "/model/importance"):
            answer = c.get(path)
            assert answer.status_code == 503, path
            assert answer.json()["error"] == "model_not_ready" and "make run" in answer.json()["message"]
        assert c.get("/model/plots/secret").status_code == 404  # the allow-list first, model or not
        history = c.get("/model/versions")
        assert history.status_code == 200
        assert history.json() == {"name": MODEL_NAME, "serving_version": None, "versions": [], "total": 0}


def test_a_cached_plot_survives_an_mlflow_outage_and_the_rest_is_a_clear_502(
    registry: Registry, tmp_path: Path
) -> None:
    """Each (run, plot) is downloaded once: the page does not reach MLflow on every render."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", model_poll_interval_seconds=3600)
    with ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        roc = httpx.get(f"{api.url}/model/plots/roc", timeout=60)
        assert roc.status_code == 200
        api.app.state.manager._source._client = MlflowClient(tracking_uri=dead, registry_uri=dead)
        again = httpx.get(f"{api.url}/model/plots/roc", timeout=60)
        assert again.status_code == 200 and again.content == roc.content
        for path in ("/model/plots/reliability", "/model/importance", "/model/versions"):
            answer = httpx.get(f"{api.url}{path}", timeout=60)
            assert answer.status_code == 502, (path, answer.text)
            body = answer.json()
            assert body["error"] == "registry_unavailable" and body["message"].startswith("MLflow could not ")
            assert dead in body["message"] and "keeps serving" in body["message"]
        assert httpx.get(f"{api.url}/predict", timeout=60).status_code == 405  # the service itself is fine


def test_a_run_without_a_plot_says_which_plots_it_has(tmp_path: Path) -> None:
    """A version trained before a plot was logged: 404 naming what its run has, and /model/plots says so."""
    from livesupport import train_champion

    champion = train_champion(tmp_path / "registry", rows=2_000)
    mlflow = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    run_id = mlflow.get_model_version(MODEL_NAME, "1").run_id
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / PLOTS_FOLDER / PLOT_FILES["precision-recall"]).unlink()
    (artifacts / IMPORTANCE_ARTIFACT).unlink()
    settings = settings_for(champion.tracking_uri, f"sqlite:///{tmp_path / 'log.db'}")
    with TestClient(create_app(settings)) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        assert c.get("/model/plots").json()["plots"] == {name: name != "precision-recall" for name in PLOT_FILES}
        missing = c.get("/model/plots/precision-recall")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert "did not log the precision-recall plot" in missing.json()["message"]
        assert "it has: roc, reliability, confusion-matrix, feature-importance" in missing.json()["message"]
        assert c.get("/model/plots/roc").status_code == 200
        importance = c.get("/model/importance")
        assert importance.status_code == 404 and "did not log a feature importance" in importance.json()["message"]
