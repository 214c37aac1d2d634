"""Training against a real `mlflow server`: MariaDB metadata, S3 artifacts (moto) through the server's proxy.

The server is started exactly as the Kubernetes manifest starts it (mlflow/deployment.yaml: the schema
upgrade of its init container, then the server's flags, with the settings of mlflow/config.env); only the
addresses change: MariaDB for MySQL, moto for MinIO, a free local port for 5000. The training client gets no
S3 credentials and no S3 endpoint: it must reach artifacts through the tracking server only, as Airflow and
the API do when deployed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from sqlalchemy import create_engine, text

from readmission.clean import read_clean
from readmission.db import normalize_url
from readmission.evaluation import risk_of
from readmission.modeling import model_input
from readmission.registry import CHAMPION, MODEL_NAME
from readmission.steps import train_job
from readmission.synthetic import build_synthetic_clean
from readmission.training import TrainConfig
from testsupport import _unavailable, read_env_file

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "mlflow" / "deployment.yaml"
CONFIG = read_env_file(REPO / "mlflow" / "config.env")
BUCKET = CONFIG["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]


def _manifest_commands(env: dict[str, str], port: int) -> tuple[list[str], list[str], dict[str, Any]]:
    """The init container's and the server's argument lists from the manifest, $(VARS) expanded from ``env``;
    the server listens on 127.0.0.1:``port`` instead of 0.0.0.0:5000. Also the server's readiness probe."""
    pod = yaml.safe_load(MANIFEST.read_text())["spec"]["template"]["spec"]
    (init,), (server,) = pod["initContainers"], pod["containers"]

    def expand(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        return {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}.get(arg, arg)

    args = [expand(a) for a in server["args"]]
    assert "--host=127.0.0.1" in args and f"--port={port}" in args  # the manifest's flags are the ones swapped
    return [expand(a) for a in init["args"]], args, server["readinessProbe"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 600) -> None:
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
        _unavailable(
            "no MySQL/MariaDB configured: set a URL whose user may create databases, e.g. TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/"
        )
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
        env = {
            **os.environ,
            **CONFIG,
            **S3_ENV,
            "MLFLOW_S3_ENDPOINT_URL": s3_url,
            "MLFLOW_BACKEND_STORE_URI": mysql_database,
        }
        upgrade, args, readiness = _manifest_commands(env, mlflow_port)
        mlflow_cli = str(bindir / "mlflow")
        done = subprocess.run([mlflow_cli, *upgrade], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        server = subprocess.Popen(
            [mlflow_cli, *args],
            env=env,
            stdout=(logs / "mlflow.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        tracking = f"http://127.0.0.1:{mlflow_port}"
        _wait_http(f"{tracking}/health", server)
        yield {"tracking": tracking, "s3": s3_url, "logs": logs, "readiness": readiness, "port": mlflow_port}
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
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=60, max_trials=1, importance_rows=200)
    try:
        job = train_job(str(clean.url), mlflow_server["tracking"], config, log=lambda _: None)
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

    s3 = boto3.client("s3", endpoint_url=mlflow_server["s3"], **_boto_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("model.skops") for k in keys), keys
    assert any(k.endswith("plots/roc_curve.png") for k in keys), keys


def _get(url: str, host: str, origin: str | None = None, body: bytes | None = None) -> int:
    headers = {"Host": host} if origin is None else {"Host": host, "Origin": origin, "Content-Type": "application/json"}
    request = urllib.request.Request(url, headers=headers, data=body)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_manifest_server_answers_its_probes_and_allowed_hosts_only(mlflow_server: dict[str, Any]) -> None:
    """The readiness probe (with its Host header) reads the registry; names outside the allow-list get 403."""
    base = f"http://127.0.0.1:{mlflow_server['port']}"
    probe = mlflow_server["readiness"]["httpGet"]
    probe_host = {h["name"]: h["value"] for h in probe["httpHeaders"]}["Host"]
    assert _get(base + probe["path"], probe_host) == 200
    assert _get(base + probe["path"], "192.168.1.20:30500") == 200  # the NodePort from the Airflow VM's range
    assert _get(base + probe["path"], "mlflow.project-3-mlops.svc.cluster.local:5000") == 200
    assert _get(base + probe["path"], "attacker.example:30500") == 403  # DNS rebinding is refused
    assert _get(base + "/health", "attacker.example") == 200  # the liveness path needs no allowed name
    # The UI opened at the NodePort may change things; a page of another origin may not (CORS protection).
    create = base + "/api/2.0/mlflow/experiments/create"
    node = "192.168.1.20:30500"
    assert _get(create, node, origin=f"http://{node}", body=b'{"name": "from-the-ui"}') == 200
    assert _get(create, node, origin="http://attacker.example", body=b'{"name": "from-elsewhere"}') == 403
    with urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers={"Host": "mlflow"})) as response:
        assert b"mlflow_http_request_total" in response.read()  # --expose-prometheus, for Prometheus
