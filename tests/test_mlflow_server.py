"""Training against a real `mlflow server`: MariaDB metadata, S3 artifacts (moto) through the server's proxy.

The server is started exactly as the Kubernetes manifest starts it (tests/support/mlflowstack.py: the init
containers, the server's flags with the basic-auth app, the metrics sidecar and the users Job, with the
settings of mlflow/config.env); only the addresses change. The training client gets no S3 credentials and no
S3 endpoint, only MLflow's user `trainer`: it must reach artifacts through the tracking server only, as
Airflow and the API do when deployed. Who may do what: tests/test_mlflow_access.py.
"""

from __future__ import annotations

import base64
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflowstack import S3_ENV, Stack, http_status

from readmission.clean import read_clean
from readmission.evaluation import risk_of
from readmission.modeling import model_input
from readmission.registry import CHAMPION, MODEL_NAME
from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig

BUCKET = "mlflow"


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.mark.slow
def test_training_through_a_real_server_without_s3_credentials(
    mlflow_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    for name in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_stack.secret["MLFLOW_TRAINER_PASSWORD"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

    clean = build_synthetic_clean(tmp_path, rows=4_000, seed=5)
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=60, max_trials=1, importance_rows=200)
    try:
        job = train_job(str(clean.url), mlflow_stack.tracking, config, log=lambda _: None)
        assert job["promotion"]["promoted"]

        test = read_clean(clean, "test")
        loaded = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
        np.testing.assert_allclose(
            risk_of(loaded, model_input(test))[0],
            risk_of(mlflow.sklearn.load_model(job["best"]["model_uri"]), model_input(test))[0],
        )
        experiment = mlflow.get_experiment_by_name("diabetes-readmission")
        assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)

    s3 = boto3.client("s3", endpoint_url=mlflow_stack.s3, **_boto_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("model.skops") for k in keys), keys
    assert any(k.endswith("plots/roc_curve.png") for k in keys), keys


def _get(url: str, host: str, origin: str | None = None, body: bytes | None = None, auth: str = "") -> int:
    headers = {"Host": host} if origin is None else {"Host": host, "Origin": origin, "Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, headers=headers, data=body)
    return http_status(request)


def test_the_manifest_server_answers_its_probes_and_allowed_hosts_only(mlflow_stack: Stack) -> None:
    """The readiness probe reads the registry as the admin; names outside the allow-list get 403."""
    probe = mlflow_stack.containers["mlflow"]["readinessProbe"]["exec"]["command"]
    env = {**mlflow_stack.job_env, "MLFLOW_PORT": str(mlflow_stack.port)}
    assert subprocess.run(mlflow_stack.command_of(probe), env=env, timeout=30).returncode == 0
    wrong = {**env, "MLFLOW_AUTH_ADMIN_PASSWORD": "not-the-admin-password"}
    assert subprocess.run(mlflow_stack.command_of(probe), env=wrong, timeout=30).returncode == 1

    base = mlflow_stack.tracking
    read = base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    admin = "admin:" + mlflow_stack.secret["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert _get(read, "mlflow", auth=admin) == 200
    assert _get(read, "192.168.1.20:30500", auth=admin) == 200  # the NodePort from the Airflow VM's range
    assert _get(read, "mlflow.project-3-mlops.svc.cluster.local:5000", auth=admin) == 200
    assert _get(read, "attacker.example:30500", auth=admin) == 403  # DNS rebinding is refused
    assert _get(base + "/health", "attacker.example") == 200  # the liveness path needs no allowed name or user
    # The UI opened at the NodePort may change things; a page of another origin may not (CORS protection).
    create = base + "/api/2.0/mlflow/experiments/create"
    node = "192.168.1.20:30500"
    assert _get(create, node, origin=f"http://{node}", body=b'{"name": "from-the-ui"}', auth=admin) == 200
    assert _get(create, node, origin="http://attacker.example", body=b'{"name": "elsewhere"}', auth=admin) == 403


def test_prometheus_reads_the_metrics_from_the_sidecar_not_the_server(mlflow_stack: Stack) -> None:
    """The basic-auth app keeps the server's /metrics for admins; the sidecar serves the same counters."""
    assert _get(mlflow_stack.tracking + "/metrics", "mlflow") == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_stack.metrics_port}/metrics", timeout=10) as response:
        assert b"mlflow_http_request_total" in response.read()  # --expose-prometheus, for Prometheus
