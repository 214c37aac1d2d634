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

import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import podrun
import pytest
import yaml
from imagestack import ContainerStack, pod_spec, start_mlflow_pod
from mlflowstack import container_env, free_port, wait_http
from sqlalchemy import create_engine, text

from conftest import PostgresDatabases, _unavailable
from readmission import schema
from testsupport import read_env_file

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output" / "images"
SLICE_ROWS = 8_000  # of the real file: enough for a champion, small enough for a few minutes' pipeline
CHROMIUM = Path("/usr/bin/chromium")
PATIENCE_MS = 300_000  # hang guard of the browser steps, not a speed limit


def _images_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("images", REPO / "scripts" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["images"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


IMAGES = _images_script()


def _report(name: str, payload: Any) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"{name}: {json.dumps(payload)}")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Every service image built (cached layers are reused), by service name: its kustomization's reference."""
    missing = [tool for tool in ("buildah", "podman", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        _unavailable(f"{', '.join(missing)} missing: run scripts/test-tools.sh (apt) to build and run the images")
    base = subprocess.run([str(REPO / "scripts" / "stand-in-base.sh")], capture_output=True, text=True)
    assert base.returncode == 0, base.stdout + base.stderr
    command = IMAGES.builder(docker_allowed=False)  # podman runs them, from buildah's storage
    built, seconds = {}, {}
    for service in IMAGES.SERVICES:
        image = IMAGES.image_of(service)
        seconds[service] = round(IMAGES.build(image, command), 1)
        built[service] = image.reference
    sizes = {s: round(IMAGES.size_bytes(ref, IMAGES.engine(command)) / 1e6) for s, ref in built.items()}
    _report("build", {"seconds": seconds, "size_mb": sizes})
    return built


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
            "mlflow": f"{mysql_admin_url}/{names[0]}",
            "predictions": f"{mysql_admin_url}/{names[1]}",
            "auth": postgres.create("mlflow_auth"),
            "raw": postgres.create("raw"),
            "clean": postgres.create("clean"),
        }
    finally:
        postgres.drop_all()
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(scope="module")
def registry(
    images: dict[str, str], databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContainerStack]:
    config = read_env_file(REPO / "mlflow" / "config.env")
    folder = tmp_path_factory.mktemp("mlflow-pod")
    stack = start_mlflow_pod(images["mlflow"], databases["mlflow"], databases["auth"], folder, config)
    _report("mlflow", {"ready_seconds": round(stack.ready_seconds, 1)})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def trained(registry: ContainerStack, databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """`readmission run` on the first SLICE_ROWS encounters of the real file, as the trainer; the pipeline's
    output. The champion alias is set by its gate (the first candidate always passes it)."""
    data = Path(os.environ.get("TEST_DATA_PATH", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    if not data.exists():
        _unavailable(f"the real file is missing at {data}: set TEST_DATA_PATH")
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
    images: dict[str, str],
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
        "PREDICTION_LOG_URL": databases["predictions"],
    }
    env = _pod_env(spec, REPO / "inference-api" / "config.env", secret, overrides)
    name = f"inference-api-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path_factory.mktemp("api-pod"))
    started = time.monotonic()
    podrun.start(podrun.run_command(name, images["inference-api"], pod, spec, env, folders), env)
    try:
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
    _report("predict", {"api_ready_seconds": round(api.ready_seconds, 1), "answer": answer})


@pytest.fixture(scope="module")
def page(images: dict[str, str], api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The streamlit container of streamlit/deployment.yaml, its API the API container; the page's URL."""
    pod = pod_spec(REPO / "streamlit" / "deployment.yaml")
    spec = pod["containers"][0]
    port = free_port()
    env = _pod_env(spec, REPO / "streamlit" / "config.env", {}, {"API_URL": api.url, "API_TIMEOUT_SECONDS": "300"})
    name = f"streamlit-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path_factory.mktemp("streamlit-pod"))
    # The image's entrypoint listens on 0.0.0.0:8501; later flags win: a free loopback port instead.
    args = [f"--server.port={port}", "--server.address=127.0.0.1"]
    podrun.start(podrun.run_command(name, images["streamlit"], pod, spec, env, folders, args), env)
    try:
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
    _report("page", {"risk_shown": shown.replace("\n", " ")})


def test_the_locust_container_runs_a_capacity_check_against_the_api_container(
    images: dict[str, str], api: Api, databases: dict[str, str], tmp_path: Path
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
    podrun.start(podrun.run_command(name, images["locust"], pod, spec, env, folders), env)
    try:
        code = podrun.wait_exit(name, 900)
        output = podrun.logs(name)
    finally:
        podrun.remove(name)
    verdict = re.search(r"capacity: holds \d+ users at [\d.]+ req/s, p95 \d+ ms, errors [\d.]+% .*", output)
    assert code == 0 and verdict, output[-4000:]
    _report("locust", {"verdict": verdict.group(0).strip()})


def test_the_api_container_logs_every_answer_to_mariadb_and_flushes_on_sigterm(
    api: Api, databases: dict[str, str]
) -> None:
    """Last: the container is stopped as the kubelet stops it (SIGTERM); every answer so far is in the log."""
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
    _report("prediction_log", {"rows": rows, "predictions_counted_by_the_api": answered})


@pytest.mark.parametrize("service", ["inference-api", "streamlit", "mlflow"])
def test_the_manifest_security_settings_confine_writes_to_the_declared_volumes(
    images: dict[str, str], service: str, tmp_path: Path
) -> None:
    """The manifest's user, read-only root filesystem and dropped capabilities, in the built image: writing
    beside the code fails, writing to the pod's volume works, no capability is left."""
    pod = pod_spec(REPO / service / "deployment.yaml")
    spec = {**pod["containers"][0], "command": ["python", "-c", WRITE_PROBE], "args": []}
    name = f"{service}-confined-{uuid.uuid4().hex[:6]}"
    folders = podrun.pod_folders(pod, tmp_path)
    podrun.start(podrun.run_command(name, images[service], pod, spec, {}, folders, []), {})
    try:
        assert podrun.wait_exit(name, 300) == 0
        output = json.loads(podrun.logs(name).strip().splitlines()[-1])
    finally:
        podrun.remove(name)
    assert output == {"uid": 10001, "venv": "Read-only file system", "tmp": "ok", "capabilities": 0}, output


def test_the_fast_path_compiles_in_the_confined_api_container(images: dict[str, str], tmp_path: Path) -> None:
    """numba compiles the serving loop (serving.py) under the manifest's read-only root and user: it writes no
    cache beside the code."""
    pod = pod_spec(REPO / "inference-api" / "deployment.yaml")
    spec = {**pod["containers"][0], "command": ["python", "-c", NUMBA_PROBE], "args": []}
    name = f"inference-api-numba-{uuid.uuid4().hex[:6]}"
    podrun.start(
        podrun.run_command(name, images["inference-api"], pod, spec, {}, podrun.pod_folders(pod, tmp_path), []), {}
    )
    try:
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


PLAYED = {"Deployment", "ConfigMap"}  # Secrets go in as podman secrets, see playable()


def playable(docs: list[dict[str, Any]], folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """What `podman kube play` (4.3) runs of a rendered kustomization, and the podman secrets it needs made
    first. Left out, because podman plays pods and not the cluster around them: Service, NetworkPolicy,
    HorizontalPodAutoscaler, PodDisruptionBudget, CronJob, Job. Changed: each Secret's data becomes a podman
    secret of the same name (podman reads secretKeyRef values from there, not from the YAML); replicas 1; the
    containers' `ports` are dropped and the probes' named ports replaced by their numbers (podman refuses port
    mappings on the host network). Security settings, env, ConfigMaps and volumes are played as rendered."""
    secrets = []
    for doc in docs:
        if doc["kind"] == "Secret":
            name = doc["metadata"]["name"]
            (folder / f"{name}.json").write_text(json.dumps(doc["data"]))
            podrun.remove_secret(name)
            done = subprocess.run(
                ["podman", "secret", "create", name, str(folder / f"{name}.json")],
                env=podrun.podman_env(),
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            secrets.append(name)
    played = [doc for doc in docs if doc["kind"] in PLAYED]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secret_values = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    for doc in played:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 1
            pod = doc["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                _number_the_probe_ports(container)
                _expand_as_the_kubelet_does(container, config_maps, secret_values)
    return played, secrets


def _expand_as_the_kubelet_does(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]
) -> None:
    """Kubernetes expands $(VAR) in env values, command and args from the variables defined before; podman 4.3
    does not, so the test writes the expanded values into what it plays (the kubelet's work, nothing more)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            entry["value"] = env[entry["name"]] = _expand_known(entry.get("value", ""), env)
    for key in ("command", "args"):
        if key in container:
            container[key] = [_expand_known(part, env) for part in container[key]]


def _expand_known(value: str, env: dict[str, str]) -> str:
    """$(VAR) replaced where VAR is defined; left as written otherwise (Kubernetes' rule)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _number_the_probe_ports(container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container.pop("ports", []) if "name" in p}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind, {})
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if action and action["port"] in ports:
            action["port"] = ports[action["port"]]


@pytest.mark.parametrize(
    ("service", "port", "path"), [("inference-api", 8000, "/health/live"), ("streamlit", 8501, "/_stcore/health")]
)
def test_podman_kube_play_runs_the_rendered_deployment(
    images: dict[str, str], service: str, port: int, path: str, tmp_path: Path
) -> None:
    """`kubectl kustomize <service>` (with `make k8s-secrets`' generated secrets) played by `podman kube play`
    on the host network: the pod and its container reach Running and the container's own probe endpoint
    answers on the manifest's port (the API's liveness: its readiness needs the cluster's MLflow, which the
    end-to-end tests above give it). What podman cannot play is listed in ``playable``."""
    if shutil.which("kubectl") is None:
        _unavailable("kubectl is not installed (it renders the kustomization)")
    with socket_free(port):
        pass
    shutil.copytree(REPO / service, tmp_path / service, ignore=shutil.ignore_patterns("secrets.env", "__pycache__"))
    if list((tmp_path / service).glob("secrets.env.example")):
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "k8s_secrets.py"), str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / service)], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    played, secrets = playable([d for d in yaml.safe_load_all(rendered.stdout) if d], tmp_path)
    deployment = next(d for d in played if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images[service]
    (tmp_path / "play.yaml").write_text(yaml.safe_dump_all(played))
    play = ["podman", "kube", "play", "--network", "host", str(tmp_path / "play.yaml")]
    try:
        done = subprocess.run(play, env=podrun.podman_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        pod = f"{deployment['metadata']['name']}-pod-0"
        container = f"{pod}-{deployment['spec']['template']['spec']['containers'][0]['name']}"
        waited = podrun.wait_probe(container, {"httpGet": {"path": path, "port": port}}, {str(port): port}, 300)
        states = pod_states(pod)
        _report(f"kube-play-{service}", {"states": states, "probe": f"{path} answered after {waited:.1f} s"})
        assert states["pod"] == "Running" and all(s == "running" for s in states["containers"].values()), states
    finally:
        subprocess.run(
            ["podman", "kube", "down", str(tmp_path / "play.yaml")], env=podrun.podman_env(), capture_output=True
        )
        for name in secrets:
            podrun.remove_secret(name)


def pod_logs(pod: str) -> str:
    """The output of every container of the pod, init containers included (what `kubectl logs` would show)."""
    listed = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"pod={pod}", "--format", "{{.Names}}"],
        env=podrun.podman_env(),
        capture_output=True,
        text=True,
    )
    return "".join(f"\n--- {name}:\n{podrun.logs(name)[-3000:]}" for name in listed.stdout.split())


def pod_states(pod: str) -> dict[str, Any]:
    """The pod's status and each of its containers' (the infra container left out)."""
    done = subprocess.run(
        ["podman", "pod", "inspect", pod], env=podrun.podman_env(), capture_output=True, text=True, check=True
    )
    info = json.loads(done.stdout)
    info = info[0] if isinstance(info, list) else info
    containers = {c["Name"]: c["State"] for c in info["Containers"] if not c["Name"].endswith("-infra")}
    return {"pod": info["State"], "containers": containers}


@contextlib.contextmanager
def socket_free(port: int) -> Iterator[None]:
    """Fails with the port's number when something already listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        busy = s.connect_ex(("127.0.0.1", port)) == 0
    assert not busy, f"port {port} is in use (a `make run`?): the played pod listens there; stop it and run again"
    yield


def _init_sql(script: Path, keep: str) -> list[str]:
    """The statements of a database init script's SQL block (mysql/ or postgres/init-databases.sh) that name
    ``keep``, one per line as written there."""
    block = script.read_text().split("<<SQL", 1)[1] if "<<SQL" in script.read_text() else script.read_text()
    block = block.split("<<'SQL'", 1)[-1].split("\nSQL", 1)[0]
    return [line.strip() for line in block.splitlines() if keep in line and not line.lstrip().startswith("--")]


@contextlib.contextmanager
def cluster_databases(secret: dict[str, str], mysql_admin_url: str, postgres_admin_url: str) -> Iterator[None]:
    """The MLflow pod's databases as the cluster's init scripts make them, under their cluster names, on this
    machine's MariaDB (database and user `mlflow`) and PostgreSQL (`mlflow_auth`); all dropped afterwards.
    Refuses to touch a server that already has them (someone's data)."""
    maria = create_engine(mysql_admin_url, isolation_level="AUTOCOMMIT")
    pg = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with maria.connect() as m, pg.connect() as p:
        taken = (
            m.execute(text("SHOW DATABASES LIKE 'mlflow'")).first()
            or p.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'mlflow_auth'")).first()
        )
        assert not taken, "MariaDB has a database `mlflow` or PostgreSQL a role `mlflow_auth`: this test makes its own"
        for line in _init_sql(REPO / "mysql" / "init-databases.sh", "mlflow"):
            m.execute(text(line.replace("${MLFLOW_DB_PASSWORD}", secret["MLFLOW_DB_PASSWORD"])))
        password = secret["MLFLOW_AUTH_DB_PASSWORD"].replace("'", "''")
        for line in _init_sql(REPO / "postgres" / "init-databases.sh", "mlflow_auth"):
            p.execute(text(line.replace(":'mlflow_auth_password'", f"'{password}'")))
    try:
        yield
    finally:
        with maria.connect() as m, pg.connect() as p:
            m.execute(text("DROP DATABASE IF EXISTS mlflow"))
            m.execute(text("DROP USER IF EXISTS 'mlflow'@'%'"))
            p.execute(text("DROP DATABASE IF EXISTS mlflow_auth WITH (FORCE)"))
            p.execute(text("DROP ROLE IF EXISTS mlflow_auth"))
        maria.dispose()
        pg.dispose()


CLUSTER_NAMES = ["mysql", "postgres", "minio"]  # the MLflow pod's in-cluster peers, here on 127.0.0.1


def test_podman_kube_play_runs_the_mlflow_deployment(
    images: dict[str, str], mysql_admin_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    """`kubectl kustomize mlflow` played by `podman kube play`: both init containers complete (schema upgrade,
    auth configuration), the server and the metrics sidecar reach Running, the liveness endpoint (/health on
    5000), the readiness probe (access.py probe: the admin reads the registry) and the sidecar's port answer.
    The cluster's names are this machine's: mysql, postgres and minio resolve to 127.0.0.1 (`hostAliases`, and
    podman's base hosts file, which is what it reads on the host network), where
    MariaDB and PostgreSQL hold the databases and users of mysql/ and postgres/init-databases.sh (their MLflow
    statements, with the generated passwords) and moto listens on minio's port 9000."""
    for port in (5000, 9000, 9101):
        with socket_free(port):
            pass
    shutil.copytree(REPO / "mlflow", tmp_path / "mlflow", ignore=shutil.ignore_patterns("secrets.env", "__pycache__"))
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "k8s_secrets.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "mlflow")], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    secret_doc = next(d for d in docs if d["kind"] == "Secret")
    secret = {k: base64.b64decode(v).decode() for k, v in secret_doc["data"].items()}
    played, secrets = playable(docs, tmp_path)
    deployment = next(d for d in played if d["kind"] == "Deployment")
    pod_template = deployment["spec"]["template"]["spec"]
    pod_template["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": CLUSTER_NAMES}]
    # podman 4.3 gives init containers the pod's restart policy (Always): a finished db-upgrade starts again and
    # `kube play` fails to remove it ("cannot remove container ... as it is running"). The kubelet never restarts
    # a completed init container; OnFailure is that behaviour here.
    pod_template["restartPolicy"] = "OnFailure"
    (tmp_path / "play.yaml").write_text(yaml.safe_dump_all(played))
    # podman 4.3 ignores hostAliases on the host network; its base hosts file is read there.
    (tmp_path / "hosts").write_text(f"127.0.0.1 localhost {' '.join(CLUSTER_NAMES)}\n")
    conf = tmp_path / "containers.conf"
    conf.write_text(
        podrun.CONTAINERS_CONF.read_text().replace(
            "[containers]\n", f'[containers]\nbase_hosts_file = "{tmp_path / "hosts"}"\n', 1
        )
    )
    with cluster_databases(secret, mysql_admin_url, postgres_admin_url), moto_on(9000, "mlflow", tmp_path):
        try:
            play = ["podman", "kube", "play", "--network", "host", str(tmp_path / "play.yaml")]
            env = podrun.podman_env({"CONTAINERS_CONF": str(conf)})
            done = subprocess.run(play, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout + done.stderr + pod_logs("mlflow-pod-0")
            pod = "mlflow-pod-0"
            server, sidecar = f"{pod}-mlflow", f"{pod}-metrics"
            live = podrun.wait_probe(server, {"httpGet": {"path": "/health", "port": 5000}}, {"5000": 5000}, 600)
            ready = podrun.wait_probe(server, pod_template["containers"][0]["readinessProbe"], {}, 300)
            podrun.wait_probe(sidecar, {"tcpSocket": {"port": 9101}}, {"9101": 9101}, 120)
            states = pod_states(pod)
            _report(
                "kube-play-mlflow",
                {"states": states, "live_after_s": round(live, 1), "ready_after_more_s": round(ready, 1)},
            )
            assert states["pod"] == "Running" and set(states["containers"].values()) == {"running"}, states
        finally:
            subprocess.run(
                ["podman", "kube", "down", str(tmp_path / "play.yaml")], env=podrun.podman_env(), capture_output=True
            )
            for name in secrets:
                podrun.remove_secret(name)


@contextlib.contextmanager
def moto_on(port: int, bucket: str, folder: Path) -> Iterator[None]:
    """moto's S3 server on 127.0.0.1:``port`` with ``bucket`` (MinIO's stand-in), stopped afterwards."""
    import boto3

    moto = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(folder / "moto.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", moto, 60)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        yield
    finally:
        moto.terminate()
        moto.wait(timeout=30)
