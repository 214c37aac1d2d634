"""The MLflow server of the Kubernetes manifests, started here with real components.

`start_stack` runs what the pod runs, from mlflow/deployment.yaml and mlflow/job-users.yaml: the schema
upgrade and the auth-config init containers, the server with its flags (the basic-auth app included), the
metrics sidecar, then the users Job. Only addresses change: MariaDB for MySQL, a scratch PostgreSQL database
for the user store, moto for MinIO, free local ports, and local paths for the pod's volumes. Secrets are
generated per run as `make k8s-secrets` does.
"""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "mlflow" / "deployment.yaml"
USERS_JOB = REPO / "mlflow" / "job-users.yaml"
ACCESS_SCRIPT = "/opt/mlflow-access/access.py"  # where mlflow/Dockerfile puts mlflow/access.py
# The pod's volumes (mlflow/deployment.yaml) as folders of a test stack: the auth configuration's memory
# volume, and the workers' metrics folder on the shared /tmp volume.
POD_PATHS = {"/etc/mlflow-access": "access", "/tmp/prometheus": "prometheus"}
SECRET_KEYS = (
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_TRAINER_PASSWORD",
    "MLFLOW_INFERENCE_PASSWORD",
    "MLFLOW_AUTH_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "MLFLOW_S3_USER",
    "MLFLOW_S3_PASSWORD",
)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 600) -> None:
    """Wait until ``url`` answers 200; RuntimeError if ``proc`` exits first, TimeoutError after ``seconds``."""
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


def generated_secrets() -> dict[str, str]:
    """Random values for every key of mlflow-credentials (what `make k8s-secrets` writes)."""
    return {key: secrets.token_urlsafe(24) for key in SECRET_KEYS}


def pod_containers() -> dict[str, dict[str, Any]]:
    """The MLflow pod's init and regular containers by name, and the users Job's container as `users`."""
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    job = yaml.safe_load(USERS_JOB.read_text())["spec"]["template"]["spec"]
    containers = [*pod["initContainers"], *pod["containers"], *job["containers"]]
    return {c["name"]: c for c in containers}


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def local_path(value: str, stack_dir: Path) -> str:
    """``value`` with the pod's volume paths (POD_PATHS) replaced by folders of ``stack_dir``."""
    for pod_path, folder in POD_PATHS.items():
        value = value.replace(pod_path, str(stack_dir / folder))
    return value


def container_env(
    container: dict[str, Any], config: Mapping[str, str], secret: Mapping[str, str], overrides: Mapping[str, str]
) -> dict[str, str]:
    """The environment Kubernetes gives ``container``: its ConfigMap (``config``, when it has an envFrom),
    then each `env` entry in order ($(VAR) expanded, secretKeyRef looked up in ``secret``); ``overrides``
    replace the in-cluster addresses and paths afterwards, of the variables the container declares only (a
    variable the manifest forgot stays missing here too)."""
    env = dict(config) if container.get("envFrom") else {}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        env[entry["name"]] = secret[ref["key"]] if ref else _expand(entry["value"], env)
    return {key: overrides.get(key, value) for key, value in env.items()}


@dataclass
class Stack:
    """A running MLflow server of the manifests, with what a test needs to reach and inspect it."""

    tracking: str
    port: int
    metrics_port: int
    s3: str
    logs: Path
    secret: dict[str, str]
    auth_db: str
    containers: dict[str, dict[str, Any]]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    job_env: dict[str, str] = field(default_factory=dict)

    def command(self, container: str) -> list[str]:
        """The container's command with the image's script path replaced by the repository's file."""
        return self.command_of(self.containers[container]["command"])

    def command_of(self, command: list[str]) -> list[str]:
        """``command`` (of a container or an exec probe) as it runs here: this interpreter, the repository's
        script, and the pod's /etc/mlflow-access volume as a folder of this stack."""

        def local(arg: str) -> str:
            if arg == "python":
                return sys.executable
            if arg == ACCESS_SCRIPT:
                return str(REPO / "mlflow" / "access.py")
            return local_path(arg, self.logs)

        return [local(a) for a in command]

    def run_users_job(self, **changes: str) -> subprocess.CompletedProcess[str]:
        """Run the users Job's command with its manifest environment (``changes`` replace variables)."""
        env = {**self.job_env, **changes}
        return subprocess.run(self.command("users"), env=env, capture_output=True, text=True, timeout=300)

    def stop(self) -> None:
        """Terminate every process this stack started."""
        for proc in reversed(self.processes):
            proc.terminate()
            proc.wait(timeout=30)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _start_moto(stack_dir: Path, bucket: str) -> tuple[subprocess.Popen[bytes], str]:
    import boto3

    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(stack_dir / "moto.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/", moto, 60)
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return moto, url


def server_args(container: dict[str, Any], env: Mapping[str, str], port: int) -> list[str]:
    """The server container's arguments, $(VARS) expanded, listening on 127.0.0.1:``port``."""
    swap = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}
    args = [swap.get(_expand(a, env), _expand(a, env)) for a in container["args"]]
    assert "--host=127.0.0.1" in args and f"--port={port}" in args  # the manifest's flags are the ones swapped
    return args


def _run_init(stack: Stack, name: str, env: dict[str, str]) -> None:
    spec = stack.containers[name]
    command = stack.command(name) if "command" in spec else [str(Path(sys.executable).parent / "mlflow")]
    args = [_expand(a, env) for a in spec.get("args", [])]
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"init container {name}: " + done.stdout[-2000:] + done.stderr[-2000:]


def stack_addresses(s3: str, mysql_url: str, auth_db_url: str, tracking: str, metrics_port: int) -> dict[str, str]:
    """The variables whose in-cluster addresses a test stack replaces, with this stack's values."""
    return {
        **S3_ENV,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "MLFLOW_BACKEND_STORE_URI": mysql_url,
        "MLFLOW_AUTH_DATABASE_URI": auth_db_url,
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_METRICS_PORT": str(metrics_port),
    }


def start_stack(
    mysql_url: str, auth_db_url: str, stack_dir: Path, config: dict[str, str], base: Mapping[str, str]
) -> Stack:
    """Start moto, run the pod's init containers, start the server and the metrics sidecar, run the users
    Job; returns the running Stack (call ``stop``). ``config`` is mlflow/config.env, ``base`` the parent's
    environment (PATH and the like)."""
    bucket = config["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    (stack_dir / "access").mkdir()
    (stack_dir / "prometheus").mkdir()
    moto, s3 = _start_moto(stack_dir, bucket)
    port, metrics_port = free_port(), free_port()
    stack = Stack(
        f"http://127.0.0.1:{port}",
        port,
        metrics_port,
        s3,
        stack_dir,
        generated_secrets(),
        auth_db_url,
        pod_containers(),
        [moto],
    )
    addresses = stack_addresses(s3, mysql_url, auth_db_url, stack.tracking, metrics_port)
    try:
        _start_processes(stack, config, base, addresses)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_processes(stack: Stack, config: dict[str, str], base: Mapping[str, str], addresses: dict[str, str]) -> None:
    def env_of(name: str) -> dict[str, str]:
        env = container_env(stack.containers[name], config, stack.secret, addresses)
        return {**base, **{key: local_path(value, stack.logs) for key, value in env.items()}}

    for init in ("db-upgrade", "auth-config"):
        _run_init(stack, init, env_of(init))
    server_env = env_of("mlflow")
    args = [local_path(a, stack.logs) for a in server_args(stack.containers["mlflow"], server_env, stack.port)]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), *args],
        env=server_env,
        stdout=(stack.logs / "mlflow.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    stack.processes.append(server)
    wait_http(f"{stack.tracking}/health", server)
    sidecar = subprocess.Popen(
        stack.command("metrics"),
        env=env_of("metrics"),
        stdout=(stack.logs / "metrics.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    stack.processes.append(sidecar)
    stack.job_env = env_of("users")
    done = stack.run_users_job()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def http_status(request: urllib.request.Request, timeout: float = 60) -> int:
    """The HTTP status ``request`` gets (an error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
