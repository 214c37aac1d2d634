"""airflow/docker-compose.yaml: valid for Docker Compose, the services and health checks as designed,
every variable listed in airflow/.env.example, and no secret written into the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from testsupport import _unavailable, read_env_file

REPO = Path(__file__).resolve().parents[1]

COMPOSE = REPO / "airflow" / "docker-compose.yaml"
ENV_EXAMPLE = REPO / "airflow" / ".env.example"
SERVICES = {
    "airflow-db",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_CONN")
FILLED = {  # the values an operator must fill in, set for the check
    "AIRFLOW_ADMIN_PASSWORD": "admin-pass",
    "AIRFLOW_DB_PASSWORD": "db-pass",
    "AIRFLOW_FERNET_KEY": "fernet",
    "AIRFLOW_JWT_SECRET": "jwt",
    "CLUSTER_ADDRESS": "192.0.2.10",
    "RAW_DB_PASSWORD": "raw-pass",
    "CLEAN_DB_PASSWORD": "clean-pass",
    "MLFLOW_TRACKING_PASSWORD": "trainer-pass",
}


def _compose() -> list[str]:
    """`docker compose` (v2) when present, else the standalone `docker-compose`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    _unavailable("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError  # unreachable


def _example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def _config(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose(), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_compose_config_is_valid_and_the_services_are_as_designed(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={FILLED.get(k, v)}\n" for k, v in _example().items()))
    done = _config(env_file)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if name != "airflow-init":  # a one-shot job: the others wait for it to complete
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    commands = {name: service.get("command") for name, service in services.items()}
    assert commands["airflow-apiserver"] in (["api-server"], "api-server")
    for name in ("scheduler", "dag-processor", "triggerer"):
        assert commands[f"airflow-{name}"] in ([name], name)
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW_CONN_READMISSION_RAW"] == "postgres://raw_writer:raw-pass@192.0.2.10:30432/raw"
    assert env["AIRFLOW_VAR_READMISSION_MLFLOW_TRACKING_URI"] == "http://192.0.2.10:30500"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("trainer", "trainer-pass")
    assert env["AIRFLOW_VAR_READMISSION_PYTHON"] == "/opt/readmission/bin/python"
    init = services["airflow-init"]["environment"]
    assert init["_AIRFLOW_WWW_USER_USERNAME"] == "admin" and init["_AIRFLOW_WWW_USER_PASSWORD"] == "admin-pass"
    depends = services["airflow-apiserver"]["depends_on"]
    assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    assert depends["airflow-db"]["condition"] == "service_healthy"


def test_compose_refuses_to_start_without_the_secrets() -> None:
    done = _config(ENV_EXAMPLE)  # the example leaves every secret empty
    assert done.returncode != 0
    assert "in airflow/.env" in done.stderr  # the message says which variable to set, and where


def _literal_secrets(compose: dict[str, Any]) -> list[str]:
    """Environment entries with a secret-looking name whose value is not read from ``${...}``, or that
    embed a password (``user:password@``) outside the ``${...}`` references."""
    blocks = [
        compose["x-airflow-common"]["environment"],
        *(s.get("environment", {}) for s in compose["services"].values()),
    ]
    found = []
    for block in blocks:
        for key, value in block.items():
            if SECRET_NAME.search(key):
                literal = re.sub(r"\$\{[^}]*\}", "", str(value))
                if "${" not in str(value) or re.search(r":[^/@:]+@", literal):
                    found.append(key)
    return sorted(set(found))


def test_every_variable_is_in_the_example_and_no_secret_is_in_the_file() -> None:
    text = COMPOSE.read_text()
    # $${HOSTNAME} is the container's own variable, escaped for Compose.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    assert used <= set(_example()), f"not in airflow/.env.example: {sorted(used - set(_example()))}"
    assert _literal_secrets(yaml.safe_load(text)) == []
    for key, value in _example().items():
        if SECRET_NAME.search(key):
            assert value == "", f"{key} has a value in the committed example"


def test_the_secret_check_catches_a_written_password() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    compose["services"]["airflow-db"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_READMISSION_RAW"] = (
        "postgres://u:hunter2@${CLUSTER_ADDRESS}/raw"
    )
    assert _literal_secrets(compose) == ["AIRFLOW_CONN_READMISSION_RAW", "POSTGRES_PASSWORD"]
