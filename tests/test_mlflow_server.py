"""Training against a real `mlflow server`: MariaDB metadata, S3 artifacts (moto) through the server's proxy.

The training client gets no S3 credentials and no S3 endpoint: it must reach artifacts through the
tracking server only, as Airflow and the API do when deployed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from conftest import _unavailable
from readmission.clean import read_clean
from readmission.db import normalize_url
from readmission.evaluation import risk_of
from readmission.modeling import model_input
from readmission.registry import CHAMPION, MODEL_NAME
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig, train_and_register

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "mlflow-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def mysql_database() -> Iterator[str]:
    """A scratch MariaDB/MySQL database for MLflow's metadata."""
    url = os.environ.get("TEST_MYSQL_URL")
    if not url:
        _unavailable("no MySQL/MariaDB configured: set TEST_MYSQL_URL")
    assert url is not None
    name = f"readmission_mlflow_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        _unavailable(f"MySQL at {url} is not usable: {exc}")
    base = normalize_url(url).rstrip("/")
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    admin.dispose()


@pytest.fixture(scope="module")
def mlflow_server(mysql_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto S3 + `mlflow server` (MariaDB backend, proxied artifacts); yields the URLs."""
    import boto3

    logs = tmp_path_factory.mktemp("servers")
    s3_port, mlflow_port = _free_port(), _free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    bindir = Path(sys.executable).parent
    moto = subprocess.Popen(
        [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=(logs / "moto.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = None
    try:
        _wait_http(f"{s3_url}/moto-api/", moto, 60)
        boto3.client("s3", endpoint_url=s3_url, **_boto_credentials()).create_bucket(Bucket=BUCKET)
        env = {**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_url}
        server = subprocess.Popen(
            [
                str(bindir / "mlflow"),
                "server",
                "--backend-store-uri",
                mysql_database,
                "--artifacts-destination",
                f"s3://{BUCKET}/artifacts",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--allowed-hosts",
                f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
            ],
            env=env,
            stdout=(logs / "mlflow.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        tracking = f"http://127.0.0.1:{mlflow_port}"
        _wait_http(f"{tracking}/health", server)
        yield {"tracking": tracking, "s3": s3_url, "logs": logs}
    finally:
        for proc in (server, moto):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.mark.slow
def test_training_through_a_real_server_without_s3_credentials(
    mlflow_server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    for name in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

    clean = build_synthetic_clean(tmp_path, rows=4_000, seed=5)
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=1, importance_rows=200)
    try:
        report = train_and_register(clean, mlflow_server["tracking"], config, log=lambda _: None)
        assert report.decision.promoted

        test = read_clean(clean, "test")
        loaded = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
        np.testing.assert_allclose(
            risk_of(loaded, model_input(test))[0], risk_of(report.best.model, model_input(test))[0]
        )
        experiment = mlflow.get_experiment_by_name("diabetes-readmission")
        assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    finally:
        mlflow.set_tracking_uri(None)

    s3 = boto3.client("s3", endpoint_url=mlflow_server["s3"], **_boto_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("model.skops") for k in keys), keys
    assert any(k.endswith("plots/roc_curve.png") for k in keys), keys
