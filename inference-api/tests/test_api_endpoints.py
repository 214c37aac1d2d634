"""Every endpoint's success and error paths, with exact status codes and bodies (real model, real registry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient

from inference_api.app import create_app
from inference_api.prediction_log import count_rows
from readmission import schema

EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())
TEST_TOKEN = "reload-token-of-the-tests"  # no digit: not a secret-looking literal (test_kubernetes)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture
def client(registry: Registry, log_url: str) -> Iterator[TestClient]:
    app = create_app(settings_for(registry.uri, log_url, max_batch_size=5, reload_token=TEST_TOKEN))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


def test_predict_answers_one_encounter_with_the_champion(client: TestClient) -> None:
    response = client.post("/predict", json=EXAMPLES[1], headers={"X-Request-ID": "req-123"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "model", "predicted_class", "probabilities", "risk_30_days", "risk_band"}
    assert body["request_id"] == "req-123" == response.headers["x-request-id"]
    assert body["model"] == {"name": "diabetes-readmission", "version": "1", "alias": "champion"}
    assert set(body["probabilities"]) == {"NO", ">30", "<30"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["risk_30_days"] == body["probabilities"]["<30"]
    assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    low, high = 0.15, 0.30
    risk = body["risk_30_days"]
    assert body["risk_band"] == ("low" if risk < low else "medium" if risk < high else "high")


def test_batch_answers_in_order_and_equals_single_predictions(client: TestClient) -> None:
    response = client.post("/predict/batch", json={"encounters": EXAMPLES})
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["version"] == "1" and len(body["predictions"]) == len(EXAMPLES)
    for example, scored in zip(EXAMPLES, body["predictions"], strict=True):
        single = client.post("/predict", json=example).json()
        assert scored["probabilities"] == pytest.approx(single["probabilities"], abs=1e-12)
    empty = client.post("/predict/batch", json={"encounters": []})
    assert empty.status_code == 200 and empty.json()["predictions"] == []


def test_every_prediction_is_logged_with_inputs_outputs_and_version(client: TestClient, log_url: str) -> None:
    client.post("/predict", json=EXAMPLES[0])
    client.post("/predict/batch", json={"encounters": EXAMPLES})
    wait_until(lambda: _rows(log_url) == 1 + len(EXAMPLES), what="the log writer")
    from sqlalchemy import text

    from readmission.db import create_db_engine

    with create_db_engine(log_url).connect() as conn:
        row = conn.execute(text("SELECT * FROM prediction_log WHERE endpoint = 'predict'")).mappings().one()
    assert row["model_version"] == "1" and row["model_name"] == "diabetes-readmission"
    assert row["predicted_class"] in {"NO", ">30", "<30"} and row["latency_ms"] > 0
    assert row["probability_no"] + row["probability_after_30"] + row["probability_within_30"] == pytest.approx(1)


def _rows(url: str) -> int:
    try:
        return count_rows(url)
    except Exception:
        return -1


def test_model_health_metrics_and_docs(client: TestClient) -> None:
    model = client.get("/model")
    assert model.status_code == 200
    info = model.json()
    assert info["name"] == "diabetes-readmission" and info["version"] == "1" and info["alias"] == "champion"
    assert len(info["run_id"]) == 32 and info["prediction_path"] in {
        "compiled",
        "compiled-input",
        "compiled-calibrated",
        "compiled-input-calibrated",
        "pipeline",
    }
    assert "test_roc_auc_30" in info["metrics"] and "loaded_at" in info
    live = client.get("/health/live").json()
    assert live == {"status": "alive", "instance": client.app.state.components.instance_id}  # type: ignore[attr-defined]
    assert len(live["instance"]) == 16
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/predict", json=EXAMPLES[0])
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        'inference_requests_total{endpoint="/predict",method="POST",status="200"}',
        "inference_request_duration_seconds_bucket",
        "inference_predictions_total",
        "inference_readmission_risk_bucket",
        'inference_model_info{alias="champion",name="diabetes-readmission"',
        "inference_model_loaded 1.0",
        "inference_model_load_failures_total",
        "inference_prediction_log_queue_depth",
        "inference_prediction_log_rows_written_total",
        "inference_prediction_log_rows_dropped_total 0.0",
        "inference_prediction_log_write_errors_total",
    ):
        assert name in text, name
    spec = client.get("/openapi.json").json()
    examples = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == set(schema.EXAMPLE_ENCOUNTERS)
    # the documented batch limit is the one this instance enforces (MAX_BATCH_SIZE=5 here)
    assert spec["components"]["schemas"]["BatchRequest"]["properties"]["encounters"]["maxItems"] == 5


def test_invalid_input_is_422_naming_each_field_with_allowed_values(client: TestClient) -> None:
    bad = {**EXAMPLES[0], "race": "Martian", "num_medications": 500, "unexpected": 1}
    del bad["gender"]
    response = client.post("/predict", json=bad)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_input" and body["request_id"] == response.headers["x-request-id"]
    by_field = {e["field"]: e for e in body["errors"]}
    assert set(by_field) == {"race", "gender", "num_medications", "unexpected"}
    assert by_field["race"]["allowed"] == ["AfricanAmerican", "Asian", "Caucasian", "Hispanic", "Other", "null"]
    assert by_field["gender"]["message"] == "required: send one of 'Female', 'Male' or 'Unknown/Invalid'"
    assert (by_field["num_medications"]["minimum"], by_field["num_medications"]["maximum"]) == (0, 100)
    assert by_field["unexpected"]["message"] == "Extra inputs are not permitted"
    in_batch = client.post("/predict/batch", json={"encounters": [EXAMPLES[0], {**EXAMPLES[1], "age": "old"}]})
    assert in_batch.status_code == 422
    assert [e["field"] for e in in_batch.json()["errors"]] == ["encounters[1].age"]
    not_json = client.post("/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "body"
    not_text = client.post("/predict", content=b"\x80", headers={"content-type": "application/json"})
    assert not_text.status_code == 400 and not_text.json()["error"] == "malformed_body"
    as_bool = client.post("/predict", json={**EXAMPLES[0], "admission_type_id": True})
    assert as_bool.status_code == 422 and [e["field"] for e in as_bool.json()["errors"]] == ["admission_type_id"]


def test_oversized_batch_and_body_are_413(client: TestClient, registry: Registry, log_url: str) -> None:
    response = client.post("/predict/batch", json={"encounters": EXAMPLES * 2})
    assert response.status_code == 413
    assert response.json()["message"] == "6 encounters in one batch; the limit is 5 (MAX_BATCH_SIZE)"
    small = create_app(settings_for(registry.uri, log_url, max_body_bytes=2048))
    with TestClient(small) as c:
        big = c.post("/predict/batch", json={"encounters": EXAMPLES})
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
        assert "MAX_BODY_BYTES" in big.json()["message"]


def test_unknown_path_and_method_are_json_errors(client: TestClient) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/nope").json()["error"] == "not_found"
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_unexpected_error_is_500_with_request_id_and_nothing_leaked(client: TestClient) -> None:
    manager: Any = client.app.state.manager  # type: ignore[attr-defined]
    predictor = manager.current.predictor

    def broken(_rows: Any) -> Any:
        raise RuntimeError("secret connection string postgres://user:pw@db")

    original = predictor.predict_proba
    predictor.predict_proba = broken
    try:
        response = client.post("/predict", json=EXAMPLES[0])
    finally:
        predictor.predict_proba = original
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error" and body["request_id"] == response.headers["x-request-id"]
    assert "secret" not in response.text and "postgres" not in response.text


@pytest.mark.parametrize(
    "authorization",
    [
        None,  # no header
        "Bearer wrong",
        f"Bearer {TEST_TOKEN[:-1]}",  # a prefix of the token
        f"Bearer {TEST_TOKEN}x",  # the token and more
        f"Basic {TEST_TOKEN}",  # another scheme
        TEST_TOKEN,  # no scheme
    ],
)
def test_reload_without_the_token_is_401(client: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    refused = client.post("/model/reload", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    body = refused.json()
    assert body["error"] == "unauthorized" and "Authorization: Bearer" in body["message"]
    assert TEST_TOKEN not in refused.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])  # case-insensitive (RFC 9110 11.1)
def test_reload_with_the_token_checks_the_registry(client: TestClient, scheme: str) -> None:
    ok = client.post("/model/reload", headers={"Authorization": f"{scheme} {TEST_TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"outcome": "unchanged", "version": "1", "last_error": None}


def test_without_a_champion_the_service_is_up_but_not_ready(tmp_path: Path, log_url: str) -> None:
    empty = f"sqlite:///{tmp_path / 'empty-mlflow.db'}"
    app = create_app(settings_for(empty, log_url))
    with TestClient(app) as c:
        wait_until(lambda: "has no `champion`" in c.get("/health/ready").text, what="a registry check")
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert "diabetes-readmission" in ready.json()["reason"]
        assert c.get("/health/live").status_code == 200
        for response in (c.post("/predict", json=EXAMPLES[0]), c.get("/model")):
            assert response.status_code == 503
            assert response.json()["error"] == "model_not_ready" and "make run" in response.json()["message"]
