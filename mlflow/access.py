"""Access control of the MLflow server: the basic-auth app's configuration, its users and their grants.

Runs inside the MLflow image (mlflow/Dockerfile copies it to /opt/mlflow-access/access.py), four ways:

    python access.py config PATH   init container: write the basic-auth configuration file to PATH from the
                                   environment; exit 2, naming the variable, on a missing or weak secret
    python access.py users         the `mlflow-users` Job: create or update the trainer and inference users and
                                   their grants; running it again changes nothing
    python access.py probe         readiness probe: the registry answers an authenticated read from its database
    python access.py metrics       sidecar: the server's request metrics for Prometheus on their own port, since
                                   the basic-auth app lets only admins read the server's /metrics

Who may do what (README, "Security"): the trainer (Airflow VM, `readmission` CLI) EDIT on the experiment and
the registered model (create runs, register versions, move aliases; no deletes); the inference API READ on
both (load the model: MLflow checks READ on the experiment for every artifact download). New users get
NO_PERMISSIONS by default. Only the standard library is imported until a command needs MLflow, so the probe
costs a few milliseconds of CPU.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# The admin password older MLflow versions shipped (GHSA-gq3w-7jj3-x7gr): public, so never acceptable.
PUBLISHED_DEFAULT_ADMIN = "password1234"  # the value refused, public, not a credential
MIN_SECRET_LENGTH = 16
READY_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


USAGE = """usage: access.py config PATH | users | probe | metrics
  config PATH  needs MLFLOW_AUTH_DATABASE_URI, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY
  users        needs MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_TRAINER_PASSWORD,
               MLFLOW_INFERENCE_PASSWORD
  probe        needs MLFLOW_AUTH_ADMIN_PASSWORD (and MLFLOW_PORT, default 5000)
  metrics      needs PROMETHEUS_MULTIPROC_DIR (and MLFLOW_METRICS_PORT, default 9101)"""


class AccessError(Exception):
    """A setting is missing or unsafe; the message names the variable and the fix."""


# Where each variable comes from in the cluster, for the message when it is missing.
SOURCES = {
    "MLFLOW_AUTH_DATABASE_URI": "mlflow/deployment.yaml builds it from MLFLOW_AUTH_DB_PASSWORD",
    "MLFLOW_TRACKING_URI": "mlflow/job-users.yaml sets it to http://mlflow:5000",
    "PROMETHEUS_MULTIPROC_DIR": "mlflow/deployment.yaml sets it to the server's --expose-prometheus folder",
}


def _required(name: str, *, secret: bool = False) -> str:
    value = os.environ.get(name, "")
    if not value.strip():
        source = SOURCES.get(name, "it comes from mlflow/secrets.env, which `make k8s-secrets` writes")
        raise AccessError(f"{name} is empty: set it (in the cluster, {source})")
    if secret and len(value) < MIN_SECRET_LENGTH:
        raise AccessError(f"{name} has {len(value)} characters; use at least {MIN_SECRET_LENGTH} (`make k8s-secrets`)")
    return value


def auth_config_text() -> str:
    """The basic-auth app's INI file (read by MLflow from MLFLOW_AUTH_CONFIG_PATH) for this environment.

    Reads MLFLOW_AUTH_DATABASE_URI (the user store's SQLAlchemy URL), MLFLOW_AUTH_ADMIN_USERNAME (default
    `admin`), and checks MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY, which MLflow reads from
    the environment itself (they are not written to the file). Raises AccessError on a missing value, a
    secret under 16 characters, or the legacy default admin password.
    """
    database_uri = _required("MLFLOW_AUTH_DATABASE_URI")
    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") == PUBLISHED_DEFAULT_ADMIN:
        raise AccessError(
            "MLFLOW_AUTH_ADMIN_PASSWORD is the admin password older MLflow versions shipped (GHSA-gq3w-7jj3-x7gr), "
            "which anyone can look up: refusing to start. Generate one with `make k8s-secrets` (or set your own of "
            "16+ characters)"
        )
    _required("MLFLOW_AUTH_ADMIN_PASSWORD", secret=True)
    _required("MLFLOW_FLASK_SERVER_SECRET_KEY", secret=True)
    lines = [
        "[mlflow]",
        "default_permission = NO_PERMISSIONS",
        f"database_uri = {database_uri.replace('%', '%%')}",
        f"admin_username = {(os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME') or 'admin').replace('%', '%%')}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ]
    return "\n".join(lines) + "\n"


def write_config(path: Path) -> None:
    """Write ``auth_config_text()`` to ``path`` with mode 600 (it holds the user store's password)."""
    text = auth_config_text()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise AccessError(
            f"cannot write the auth configuration to {path}: {exc.strerror} (mount a volume there)"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(
        f"wrote {path}: default permission NO_PERMISSIONS, admin {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME') or 'admin'}"
    )


def answers(url: str, username: str, password: str, timeout: float = 5.0) -> int:
    """HTTP status of an authenticated GET of ``url`` (0 when the server cannot be reached)."""
    if not url.startswith(("http://", "https://")):
        raise AccessError(f"MLFLOW_TRACKING_URI must be an http(s) address like http://mlflow:5000, got {url!r}")
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {basic}"})  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def probe() -> int:
    """Readiness: 0 when the server on 127.0.0.1:PORT (default 5000) answers the admin's registry read."""
    port = os.environ.get("MLFLOW_PORT", "5000")
    username = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    status = answers(f"http://127.0.0.1:{port}{READY_PATH}", username, _required("MLFLOW_AUTH_ADMIN_PASSWORD"))
    return 0 if status == 200 else 1


# (user variable prefix, default username, permission on the experiment and on the registered model)
ROLES = (("MLFLOW_TRAINER", "trainer", "EDIT"), ("MLFLOW_INFERENCE", "inference", "READ"))


def wait_for_server(uri: str, username: str, password: str, seconds: float) -> None:
    """Wait until the admin can read the registry; AccessError at once on a refused password (401 does not
    change by waiting), and naming the last status after ``seconds`` otherwise."""
    if not uri.startswith(("http://", "https://")):
        raise AccessError(f"MLFLOW_TRACKING_URI must be an http(s) address like http://mlflow:5000, got {uri!r}")
    deadline = time.monotonic() + seconds
    status = answers(uri.rstrip("/") + READY_PATH, username, password)
    while status not in (200, 401) and time.monotonic() < deadline:
        time.sleep(2)
        status = answers(uri.rstrip("/") + READY_PATH, username, password)
    if status == 401:
        raise AccessError(
            f"MLflow at {uri} refused the admin's credentials: MLFLOW_AUTH_ADMIN_PASSWORD differs from the "
            "password the admin user has (rotate it as README, Security, says)"
        )
    if status != 200:
        raise AccessError(
            f"MLflow at {uri} did not answer within {seconds:.0f} s (last status {status or 'no answer'})"
        )


def ensure_user(auth: object, uri: str, username: str, password: str) -> str:
    """Create ``username`` or bring its password to ``password``; returns what was done."""
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(username)  # type: ignore[attr-defined]
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(username, password)  # type: ignore[attr-defined]
        return "created"
    if answers(uri.rstrip("/") + "/api/2.0/mlflow/users/current", username, password) == 200:
        return "unchanged"
    auth.update_user_password(username, password)  # type: ignore[attr-defined]
    return "password updated"


def ensure_grant(auth: object, username: str, resource_type: str, resource_id: str, permission: str) -> str:
    """Give ``username`` exactly ``permission`` on the resource; returns what was done."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)  # type: ignore[attr-defined]
        return "granted"
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    current = auth.get_user_permission(username, resource_type, resource_id).permission  # type: ignore[attr-defined]
    if current == permission:
        return "unchanged"
    auth.revoke_user_permission(username, resource_type, resource_id)  # type: ignore[attr-defined]
    auth.grant_user_permission(username, resource_type, resource_id, permission)  # type: ignore[attr-defined]
    return f"changed from {current}"


def ensure_resources(experiment_name: str, model_name: str) -> str:
    """Create the experiment and the registered model if missing (as the admin, so no user owns them);
    returns the experiment's id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model_name)
    return str(experiment_id)


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name) or str(default)
    try:
        return float(raw)
    except ValueError:
        raise AccessError(f"{name} must be a number, got {raw!r}") from None


def users(report: Callable[[str], None] = print) -> None:
    """Reconcile the users and grants of ROLES with the environment (the `mlflow-users` Job).

    Reads MLFLOW_TRACKING_URI, the admin's MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, MLFLOW_TRAINER_PASSWORD and
    MLFLOW_INFERENCE_PASSWORD (usernames: MLFLOW_TRAINER_USERNAME, MLFLOW_INFERENCE_USERNAME, default
    `trainer` and `inference`), EXPERIMENT_NAME and MODEL_NAME (default `diabetes-readmission`), and
    ACCESS_WAIT_SECONDS (default 300) for the server to come up. Raises AccessError or MlflowException.
    """
    uri = _required("MLFLOW_TRACKING_URI")
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    admin_password = _required("MLFLOW_AUTH_ADMIN_PASSWORD")
    wait_for_server(uri, admin, admin_password, _number("ACCESS_WAIT_SECONDS", 300))
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin, admin_password
    from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(uri)
    model = os.environ.get("MODEL_NAME") or "diabetes-readmission"
    experiment_id = ensure_resources(os.environ.get("EXPERIMENT_NAME") or "diabetes-readmission", model)
    for prefix, default_name, permission in ROLES:
        username = os.environ.get(f"{prefix}_USERNAME") or default_name
        report(f"user {username}: {ensure_user(auth, uri, username, _required(f'{prefix}_PASSWORD', secret=True))}")
        for resource_type, resource_id in (("experiment", experiment_id), ("registered_model", model)):
            done = ensure_grant(auth, username, resource_type, resource_id, permission)
            report(f"user {username}: {permission} on {resource_type} {resource_id}: {done}")


def serve_metrics() -> None:
    """Serve, on MLFLOW_METRICS_PORT (default 9101), the metrics the server's workers write to
    PROMETHEUS_MULTIPROC_DIR (the --expose-prometheus folder): request counts and latencies, no tenant data.
    Blocks until the process is stopped."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = _required("PROMETHEUS_MULTIPROC_DIR")
    Path(folder).mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    port = int(_number("MLFLOW_METRICS_PORT", 9101))
    start_http_server(port, registry=registry)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in its container: no default handler
    print(f"serving the metrics of {folder} on port {port}", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> int:
    """Command line: ``config PATH``, ``users``, ``probe`` or ``metrics``; 2 with a one-line reason on
    AccessError."""
    try:
        if argv[:1] == ["config"] and len(argv) == 2:
            write_config(Path(argv[1]))
        elif argv == ["users"]:
            users()
        elif argv == ["probe"]:
            return probe()
        elif argv == ["metrics"]:
            serve_metrics()
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except AccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
