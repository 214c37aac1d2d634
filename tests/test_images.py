"""The built images, run as the manifests run them (`make e2e`).

`make images`' builds (scripts/images.py: buildah here, Docker where an engine answers) of the mlflow,
inference-api, streamlit and locust images, on scripts/stand-in-base.sh's stand-in for python:3.11-slim-bookworm
where Docker Hub cannot be reached. Then, each container with its manifest's command, environment,
securityContext and volumes (tests/support/podrun.py), on the host network with loopback addresses, against
this machine's PostgreSQL and MariaDB and moto as the S3 store:
- the MLflow pod (init containers, basic-auth server with the manifest's arguments, metrics sidecar) and the
  users Job (tests/support/imagestack.py);
- the pipeline (`readmission run` on a slice of the real file: RAW and CLEAN in PostgreSQL) training into it as
  the trainer user;
- the inference-api container loading the champion as the inference user, answering /predict and logging to
  MariaDB;
- the streamlit container serving its page to Chromium (Playwright) with a prediction on it;
- the locust container's capacity run (the CronJob's arguments, short steps) against the API container.
The API's container is stopped last (SIGTERM, as the kubelet sends) and the logged rows are counted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import podrun
import pytest
import yaml
from imagestack import OUTPUT, ContainerStack, pod_spec, report, start_mlflow_pod
from mlflowstack import container_env, free_port
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from readmission import schema
from testsupport import PostgresDatabases, init_sql, read_env_file

REPO = Path(__file__).resolve().parents[1]
SLICE_ROWS = 8_000  # of the real file: enough for a champion, small enough for a few minutes' pipeline
CHROMIUM = Path("/usr/bin/chromium")
PATIENCE_MS = 300_000  # hang guard of the browser steps, not a speed limit


@pytest.fixture(scope="module")
def databases(mysql_admin_url: str, postgres_admin_url: str) -> Iterator[dict[str, str]]:
    """Scratch databases: MariaDB for MLflow's store and the prediction log, PostgreSQL for the user store,
    RAW and CLEAN."""
    names = [f"readmission_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "predictions")]
    admin = create_engine(mysql_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f"CREATE DATABASE {name}"))
    postgres = PostgresDatabases(postgres_admin_url)
    try:
        yield {
            "mlflow": _least_privilege_url(admin, mysql_admin_url, names[0], "mlflow"),
            "predictions": f"{mysql_admin_url}/{names[1]}",
            "predictions_as_the_api": _least_privilege_url(admin, mysql_admin_url, names[1], "inference"),
            "auth": postgres.create("mlflow_auth"),
            "raw": postgres.create("raw"),
            "clean": postgres.create("clean"),
        }
    finally:
        postgres.drop_all()
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            for name in names:
                conn.execute(text(f"DROP USER IF EXISTS '{name}'@'%'"))
        admin.dispose()


def _least_privilege_url(admin: Engine, mysql_admin_url: str, database: str, role: str) -> str:
    """The URL of the scratch ``database`` as the cluster's MariaDB user ``role`` (`mlflow` or `inference`):
    mysql/init-databases.sh's grant to that user, on ``database``, for a user of the same name with a password."""
    password = uuid.uuid4().hex
    grants = [line for line in init_sql(REPO / "mysql" / "init-databases.sh", f"'{role}'@") if line.startswith("GRANT")]
    assert len(grants) == 1, grants
    with admin.connect() as conn:
        conn.execute(text(f"CREATE USER '{database}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(text(grants[0].replace(f"{role}.*", f"{database}.*").replace(f"'{role}'@", f"'{database}'@")))
    url = make_url(mysql_admin_url).set(username=database, password=password, database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def registry(
    built_images: dict[str, str], databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContainerStack]:
    config = read_env_file(REPO / "mlflow" / "config.env")
    folder = tmp_path_factory.mktemp("mlflow-pod")
    stack = start_mlflow_pod(built_images["mlflow"], databases["mlflow"], databases["auth"], folder, config)
    report("mlflow", {"ready_seconds": round(stack.ready_seconds, 1)})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def trained(
    registry: ContainerStack, databases: dict[str, str], real_data_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """`readmission run` on the first SLICE_ROWS encounters of the real file, as the trainer; the pipeline's
    output. The champion alias is set by its gate (the first candidate always passes it)."""
    data = real_data_path
    folder = tmp_path_factory.mktemp("pipeline")
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)[: SLICE_ROWS + 1]
    (folder / "slice.csv").write_text("".join(lines), encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRAIN_", "RAW_", "CLEAN_"))},
        "RAW_DATABASE_URL": databases["raw"],
        "CLEAN_DATABASE_URL": databases["clean"],
        "MLFLOW_TRACKING_URI": registry.tracking,
        "MLFLOW_TRACKING_USERNAME": "trainer",
        "MLFLOW_TRACKING_PASSWORD": registry.secret["MLFLOW_TRAINER_PASSWORD"],
        "TRAIN_FAMILIES": "hist_gradient_boosting",  # the family the API compiles to its numba fast path
        "TRAIN_MAX_TRIALS": "1",
    }
    readmission = str(Path(sys.executable).with_name("readmission"))
    command = [readmission, "run", "--data-path", str(folder / "slice.csv")]
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "champion" in done.stdout, done.stdout[-4000:]
    return done.stdout


@dataclass
class Api:
    url: str
    container: str
    ready_seconds: float


def _pod_env(
    spec: dict[str, Any], config_env: Path, secret: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """The environment the manifest gives ``spec`` (tests/support/mlflowstack.py's rule), addresses replaced."""
    return container_env(spec, read_env_file(config_env), secret, overrides)


@pytest.fixture(scope="module")
def api(
    built_images: dict[str, str],
    registry: ContainerStack,
    trained: str,
    databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    """The inference-api container of inference-api/deployment.yaml, ready (the champion loaded)."""
    pod = pod_spec(REPO / "inference-api" / "deployment.yaml")
    spec = pod["containers"][0]
    port = free_port()
    secret = {
        "INFERENCE_DB_PASSWORD": "",
        "RELOAD_TOKEN": uuid.uuid4().hex,
        "MLFLOW_INFERENCE_PASSWORD": registry.secret["MLFLOW_INFERENCE_PASSWORD"],
    }
    overrides = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MLFLOW_TRACKING_URI": registry.tracking,
        "PREDICTION_LOG_URL": databases["predictions_as_the_api"],
    }
    env = _pod_env(spec, REPO / "inference-api" / "config.env", secret, overrides)
    name = f"inference-api-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path_factory.mktemp("api-pod"))
    started = time.monotonic()
    try:
        podrun.start(podrun.run_command(name, built_images["inference-api"], pod, spec, env, folders), env)
        podrun.wait_probe(name, spec["readinessProbe"], {"http": port})
        yield Api(f"http://127.0.0.1:{port}", name, time.monotonic() - started)
    finally:
        podrun.remove(name)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_the_api_container_serves_the_champion_and_predicts(api: Api) -> None:
    with urllib.request.urlopen(f"{api.url}/model", timeout=30) as response:
        model = json.loads(response.read())
    assert model["alias"] == "champion" and model["version"] == "1", model
    example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
    status, answer = _post(f"{api.url}/predict", example)
    assert status == 200 and 0 < answer["risk_30_days"] < 1, answer
    assert answer["model"]["alias"] == "champion", answer
    report("predict", {"api_ready_seconds": round(api.ready_seconds, 1), "answer": answer})


def test_no_secret_is_on_a_process_command_line(registry: ContainerStack, api: Api, databases: dict[str, str]) -> None:
    """No process in the running containers (MLflow's server and sidecar, the API) has a password among its
    arguments: anyone who lists processes on the node (ps) or in the pod reads those."""
    secrets = {key: value for key, value in registry.secret.items() if key.endswith(("PASSWORD", "SECRET_KEY"))}
    for name in ("mlflow", "predictions_as_the_api"):
        secrets[f"the {name} database password"] = str(make_url(databases[name]).password)
    leaked = {}
    for container in [*registry.containers, api.container]:
        if podrun.state(container)[0] != "running":
            continue
        listing = ["podman", "exec", container, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]
        done = subprocess.run(listing, env=podrun.podman_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        leaked[container] = sorted(key for key, value in secrets.items() if value in done.stdout)
    assert leaked and not any(leaked.values()), leaked


@pytest.fixture(scope="module")
def page(built_images: dict[str, str], api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The streamlit container of streamlit/deployment.yaml, its API the API container; the page's URL."""
    pod = pod_spec(REPO / "streamlit" / "deployment.yaml")
    spec = pod["containers"][0]
    port = free_port()
    env = _pod_env(spec, REPO / "streamlit" / "config.env", {}, {"API_URL": api.url, "API_TIMEOUT_SECONDS": "300"})
    name = f"streamlit-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path_factory.mktemp("streamlit-pod"))
    # The image's entrypoint listens on 0.0.0.0:8501; later flags win: a free loopback port instead.
    args = [f"--server.port={port}", "--server.address=127.0.0.1"]
    try:
        podrun.start(podrun.run_command(name, built_images["streamlit"], pod, spec, env, folders, args), env)
        podrun.wait_probe(name, spec["readinessProbe"], {"http": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        podrun.remove(name)


def test_the_page_container_shows_a_prediction_in_the_browser(page: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (scripts/test-tools.sh installs it)")
    expect.set_options(timeout=PATIENCE_MS)
    example = next(iter(schema.EXAMPLE_ENCOUNTERS))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1800})
            tab.set_default_timeout(PATIENCE_MS)
            tab.goto(page)
            expect(tab.get_by_text("Ready: diabetes-readmission v1 (@champion)")).to_be_visible()
            tab.get_by_role("button", name=example).click()
            tab.get_by_role("button", name="Predict").click()
            risk = tab.get_by_test_id("stMetric").filter(has_text="30-day readmission risk")
            expect(risk).to_contain_text(re.compile(r"\d+\.\d%"))
            shown = risk.inner_text()
            tab.screenshot(path=str(OUTPUT / "page-prediction.png"), full_page=True)
        finally:
            browser.close()
    report("page", {"risk_shown": shown.replace("\n", " ")})


def test_the_locust_container_runs_a_capacity_check_against_the_api_container(
    built_images: dict[str, str], api: Api, databases: dict[str, str], tmp_path: Path
) -> None:
    """The CronJob's container (locust/cronjob-capacity.yaml) with two short steps and an objective any working
    API meets here: it prints its verdict line and exits 0."""
    cronjob = yaml.safe_load((REPO / "locust" / "cronjob-capacity.yaml").read_text())
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    spec = pod["containers"][0]
    overrides = {
        "LOCUST_HOST": api.url,
        "LOADTEST_CLEAN_URL": databases["clean"],
        "LOADTEST_PAYLOAD_ROWS": "300",
        "CAPACITY_STEP_USERS": "3",
        "CAPACITY_STEP_SECONDS": "10",
        "CAPACITY_MAX_USERS": "6",
        "CAPACITY_MIN_USERS": "3",
        "CAPACITY_P95_MS": "60000",
    }
    env = _pod_env(spec, REPO / "locust" / "config.env", {"CLEAN_READER_PASSWORD": ""}, overrides)
    name = f"locust-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path / "pod")
    try:
        podrun.start(podrun.run_command(name, built_images["locust"], pod, spec, env, folders), env)
        code = podrun.wait_exit(name, 900)
        output = podrun.logs(name)
    finally:
        podrun.remove(name)
    verdict = re.search(r"capacity: holds \d+ users at [\d.]+ req/s, p95 \d+ ms, errors [\d.]+% .*", output)
    assert code == 0 and verdict, output[-4000:]
    report("locust", {"verdict": verdict.group(0).strip()})


def test_the_api_container_logs_every_answer_to_mariadb_and_flushes_on_sigterm(
    api: Api, databases: dict[str, str]
) -> None:
    """Last: the container is stopped as the kubelet stops it (SIGTERM); every answer so far is in the log."""
    _post(f"{api.url}/predict", next(iter(schema.EXAMPLE_ENCOUNTERS.values())))  # at least one, run alone too
    with urllib.request.urlopen(f"{api.url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    answered = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("inference_predictions_total{")
    )
    stop = subprocess.run(
        ["podman", "stop", "--time", "70", api.container], env=podrun.podman_env(), capture_output=True, text=True
    )
    assert stop.returncode == 0, stop.stderr
    # uvicorn re-raises the SIGTERM it handled once it has shut down, so the exit status tells the signal (143).
    output = podrun.logs(api.container)
    assert podrun.state(api.container) == ("exited", 143), output[-4000:]
    assert "prediction log flushed" in output and "Finished server process" in output, output[-4000:]
    engine = create_engine(databases["predictions"])
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT COUNT(*) FROM prediction_log")).scalar_one()
    engine.dispose()
    assert answered > 0 and rows == answered, (rows, answered)
    report("prediction_log", {"rows": rows, "predictions_counted_by_the_api": answered})


@pytest.mark.parametrize("service", ["inference-api", "streamlit", "mlflow"])
def test_the_manifest_security_settings_confine_writes_to_the_declared_volumes(
    built_images: dict[str, str], service: str, tmp_path: Path
) -> None:
    """The manifest's user, read-only root filesystem and dropped capabilities, in the built image: writing
    beside the code fails, writing to the pod's volume works, no capability is left."""
    pod = pod_spec(REPO / service / "deployment.yaml")
    spec = {**pod["containers"][0], "command": ["python", "-c", WRITE_PROBE], "args": []}
    name = f"{service}-confined-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path)
    try:
        podrun.start(podrun.run_command(name, built_images[service], pod, spec, {}, folders, []), {})
        assert podrun.wait_exit(name, 300) == 0
        output = json.loads(podrun.logs(name).strip().splitlines()[-1])
    finally:
        podrun.remove(name)
        podrun.remove_folders(folders)  # the mlflow pod's memory volume is in /dev/shm
    assert output == {"uid": 10001, "venv": "Read-only file system", "tmp": "ok", "capabilities": 0}, output


def test_the_fast_path_compiles_in_the_confined_api_container(built_images: dict[str, str], tmp_path: Path) -> None:
    """numba's JIT works under the manifest's read-only root and user: the serving module (its fast path's
    imports) loads and an njit function like its tree walk (nogil, no cache beside the code) compiles and runs.
    (The end-to-end champion above is calibrated, so it is served on the pipeline path.)"""
    pod = pod_spec(REPO / "inference-api" / "deployment.yaml")
    spec = {**pod["containers"][0], "command": ["python", "-c", NUMBA_PROBE], "args": []}
    name = f"inference-api-numba-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path)
    try:
        podrun.start(podrun.run_command(name, built_images["inference-api"], pod, spec, {}, folders, []), {})
        code = podrun.wait_exit(name, 300)
        output = podrun.logs(name)
    finally:
        podrun.remove(name)
    assert code == 0 and output.strip().endswith("compiled 6.0"), output[-3000:]


NUMBA_PROBE = """
import readmission.serving  # the module of the fast path imports (numba, scipy, sklearn) in the image
from numba import njit
@njit(nogil=True, cache=False)
def twice(x):
    return 2.0 * x
print("compiled", twice(3.0))
"""

WRITE_PROBE = """
import json, os
def write(path):
    try:
        open(path, "w").write("x")
        return "ok"
    except OSError as exc:
        return exc.strerror
caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
print(json.dumps({"uid": os.getuid(), "venv": write("/opt/venv/probe"), "tmp": write("/tmp/probe"),
                  "capabilities": int(caps, 16)}))
"""
