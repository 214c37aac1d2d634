"""The Kubernetes manifests, checked without a cluster.

Each folder and the root build with `kubectl kustomize` (secrets made by `scripts/k8s_secrets.py` in a
scratch copy, as `make k8s-secrets` does), every rendered object validates strictly against the
Kubernetes API schema, the objects reference each other correctly (Services -> pods and ports, claims ->
volumes, Secrets and ConfigMaps -> generated objects) and every workload has the security baseline.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testsupport import _unavailable, read_env_file

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.32.0"
NAMESPACE = "project-3-mlops"
ROOT_FOLDERS = [entry for entry in yaml.safe_load((REPO / "kustomization.yaml").read_text())["resources"]]
FOLDERS = [entry for entry in ROOT_FOLDERS if (REPO / entry).is_dir()]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the manifests with generated secrets (the repository has none)."""
    if shutil.which("kubectl") is None:
        _unavailable("kubectl is not installed (it builds the kustomizations)")
    copy = tmp_path_factory.mktemp("manifests")
    for name in ["kustomization.yaml", *ROOT_FOLDERS]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("secrets.env", "__pycache__"))
        else:
            shutil.copy(source, copy / name)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "k8s_secrets.py"), str(copy)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return copy


def build(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {folder.name} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(checkout: Path) -> list[dict[str, Any]]:
    return build(checkout)


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(workload name, pod spec, pod labels) of every workload."""
    out = []
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
            template = spec["template"]
            out.append((obj["metadata"]["name"], template["spec"], template["metadata"].get("labels", {})))
    return out


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_builds_alone_in_the_namespace(checkout: Path, folder: str) -> None:
    objects = build(checkout / folder)
    assert objects
    for obj in objects:
        if obj["kind"] not in {"PersistentVolume", "Namespace"}:  # cluster-scoped
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_rendered_object_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    problems = []
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert problems == []


def test_the_root_holds_the_namespace_and_every_folder(rendered: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert ("Namespace", NAMESPACE) in kinds
    for name in (
        "postgres",
        "mysql",
        "minio",
        "mlflow",
        "inference-api",
        "streamlit",
        "locust-master",
        "prometheus",
        "grafana",
    ):
        assert ("Deployment", name) in kinds and ("Service", name) in kinds
    assert ("Deployment", "locust-worker") in kinds and ("CronJob", "locust-capacity") in kinds
    assert ("CronJob", "prediction-log-purge") in kinds


def test_services_select_existing_pods_and_named_container_ports(rendered: list[dict[str, Any]]) -> None:
    pods = _pod_specs(rendered)
    for svc in (o for o in rendered if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        assert set(selector) == {"app.kubernetes.io/name"}, f"{svc['metadata']['name']}: select on the name only"
        matching = [spec for _, spec, labels in pods if selector.items() <= labels.items()]
        assert matching, f"Service {svc['metadata']['name']} selects no pod"
        ports = {p.get("name") for spec in matching for c in spec["containers"] for p in c.get("ports", [])}
        numbers = {p["containerPort"] for spec in matching for c in spec["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in numbers, f"{svc['metadata']['name']}: no container port {target}"


def test_claims_bind_to_volumes(rendered: list[dict[str, Any]]) -> None:
    volumes = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "PersistentVolume"}
    claims = [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    assert claims
    units = {"Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

    def size(quantity: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * units[unit]

    for claim in claims:
        name, spec = claim["metadata"]["name"], claim["spec"]
        pv = volumes.get(spec.get("volumeName", ""))
        assert pv is not None, f"claim {name} names no rendered volume"
        assert pv["spec"]["storageClassName"] == spec["storageClassName"], name
        assert set(spec["accessModes"]) <= set(pv["spec"]["accessModes"]), name
        assert size(pv["spec"]["capacity"]["storage"]) >= size(spec["resources"]["requests"]["storage"]), name
        assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": name}
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_referenced_secrets_and_config_maps_exist(rendered: list[dict[str, Any]]) -> None:
    existing = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    for workload, spec, _ in _pod_specs(rendered):
        wanted: set[tuple[str, str]] = set()
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    wanted.add(("Secret", source["secretRef"]["name"]))
                if "configMapRef" in source:
                    wanted.add(("ConfigMap", source["configMapRef"]["name"]))
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):  # optional: may be absent
                    wanted.add(("Secret", ref["secretKeyRef"]["name"]))
                if "configMapKeyRef" in ref:
                    wanted.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "persistentVolumeClaim" in volume:
                wanted.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        assert wanted <= existing, f"{workload} references missing objects: {sorted(wanted - existing)}"


def test_every_workload_has_the_security_baseline(rendered: list[dict[str, Any]]) -> None:
    dockerfiles = {p.parent.name for p in REPO.glob("*/Dockerfile")}
    for workload, spec, labels in _pod_specs(rendered):
        if spec.get("automountServiceAccountToken") is not False:  # only with a read-only Role (discovery)
            account = spec.get("serviceAccountName")
            bindings = [
                o
                for o in rendered
                if o["kind"] == "RoleBinding"
                and any(x["kind"] == "ServiceAccount" and x["name"] == account for x in o["subjects"])
            ]
            assert account and bindings, f"{workload}: a service-account token without a need"
            roles = [
                o
                for o in rendered
                if o["kind"] == "Role" and o["metadata"]["name"] in {b["roleRef"]["name"] for b in bindings}
            ]
            verbs = {verb for role in roles for rule in role["rules"] for verb in rule["verbs"]}
            assert roles and verbs <= {"get", "list", "watch"}, f"{workload}: {verbs}"
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, workload
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload
        assert "app.kubernetes.io/name" in labels, workload
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{workload}/{container['name']}"
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert tag and tag != "latest" and "/" not in tag, f"{where}: image {image} is not pinned"
            if "diabetes-readmission/" in repository:  # ours: built from a Dockerfile of this repository
                assert repository.rsplit("/", 1)[-1] in dockerfiles, f"{where}: no Dockerfile builds {image}"
            if not re.search(r"\d", tag):
                assert repository.rsplit("/", 1)[-1] in dockerfiles, (
                    f"{where}: {image} is neither pinned nor built here"
                )
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("readOnlyRootFilesystem") is True, where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            assert all(p.get("name") for p in container.get("ports", [])), f"{where}: unnamed port"
            is_server = workload in {o["metadata"]["name"] for o in rendered if o["kind"] == "Deployment"}
            if is_server and container is spec["containers"][0]:  # init containers run to completion: no probes
                readiness, liveness = container.get("readinessProbe"), container.get("livenessProbe")
                assert readiness and liveness, f"{where}: readiness and liveness probes"
                assert readiness != liveness, f"{where}: the two probes test the same thing"
            elif is_server and container in spec["containers"]:  # a sidecar: restarted when dead, but it must
                assert container.get("livenessProbe"), f"{where}: liveness probe"  # not take the pod out of service
                assert "readinessProbe" not in container, f"{where}: a sidecar's readiness would gate the pod's"


def _environment(rendered: list[dict[str, Any]], workload: str, container_name: str | None = None) -> dict[str, str]:
    """The environment a workload's container gets (default: its main one): ConfigMaps (envFrom), literal
    values, $(VAR)s expanded, and Secret values decoded (the rendered Secrets hold the generated test values)."""
    import base64

    data = {
        (o["kind"], o["metadata"]["name"]): o.get("data", {}) for o in rendered if o["kind"] in {"ConfigMap", "Secret"}
    }
    pod = next(spec for name, spec, _ in _pod_specs(rendered) if name == workload)
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    container = next(c for c in containers if c["name"] == container_name) if container_name else pod["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        )
        values = data[(kind, ref["name"])]
        env.update({k: base64.b64decode(v).decode() if kind == "Secret" else v for k, v in values.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            values = data[("Secret", ref["name"])]
            assert ref["key"] in values, f"{workload}: Secret {ref['name']} has no key {ref['key']}"
            env[item["name"]] = base64.b64decode(values[ref["key"]]).decode()
    return env


def test_service_addresses_in_settings_name_existing_services(rendered: list[dict[str, Any]]) -> None:
    """Every URL a workload is configured with points at a Service of the namespace, on one of its ports."""
    from urllib.parse import urlsplit

    services = {
        o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]} for o in rendered if o["kind"] == "Service"
    }
    seen = set()
    workloads = ("mlflow", "inference-api", "prediction-log-purge", "streamlit", "locust-master", "locust-worker")
    every = [(w, None) for w in (*workloads, "locust-capacity", "mlflow-users")] + [("mlflow", "auth-config")]
    for workload, container in every:
        for name, value in _environment(rendered, workload, container).items():
            if "://" in value and not value.startswith("s3://") and not name.endswith("_ORIGINS"):  # origins: browsers
                url = urlsplit(value)
                assert url.hostname in services, f"{workload} {name}: no Service {url.hostname}"
                assert url.port in services[url.hostname], f"{workload} {name}: {url.hostname} has no port {url.port}"
                seen.add(url.hostname)
    assert seen == {"mysql", "minio", "mlflow", "inference-api", "postgres"}


def test_a_password_two_folders_share_has_one_value(rendered: list[dict[str, Any]]) -> None:
    """The database's and its client's copy of a generated password agree in the rendered Secrets."""
    import base64

    # generated names carry kustomize's content hash: mysql-credentials-<hash>
    secrets = {o["metadata"]["name"].rsplit("-", 1)[0]: o["data"] for o in rendered if o["kind"] == "Secret"}
    for key, (owner, client) in {
        "MLFLOW_DB_PASSWORD": ("mysql-credentials", "mlflow-credentials"),
        "INFERENCE_DB_PASSWORD": ("mysql-credentials", "inference-api-credentials"),
        "INFERENCE_PURGE_DB_PASSWORD": ("mysql-credentials", "inference-api-credentials"),
        "MLFLOW_S3_PASSWORD": ("minio-credentials", "mlflow-credentials"),
        "MLFLOW_S3_USER": ("minio-credentials", "mlflow-credentials"),
        "CLEAN_READER_PASSWORD": ("postgres-credentials", "locust-credentials"),
        "MLFLOW_AUTH_DB_PASSWORD": ("postgres-credentials", "mlflow-credentials"),
        "MLFLOW_INFERENCE_PASSWORD": ("mlflow-credentials", "inference-api-credentials"),
    }.items():
        assert secrets[owner][key] == secrets[client][key], key
        assert len(base64.b64decode(secrets[owner][key])) >= 8, key
    url = _environment(rendered, "inference-api")["PREDICTION_LOG_URL"]
    assert url.startswith("mysql://inference:") and url.endswith("@mysql:3306/inference")
    purge = _environment(rendered, "prediction-log-purge")["PREDICTION_LOG_URL"]
    assert purge.startswith("mysql://inference_purge:") and purge.endswith("@mysql:3306/inference")


def test_the_mlflow_pod_and_its_clients_agree_on_paths_users_and_ports(rendered: list[dict[str, Any]]) -> None:
    """What the MLflow server's pieces must share: the auth configuration file (written by `auth-config`, read
    by the server, on one volume), the metrics folder (written by the workers, served by the sidecar), the
    usernames the Job creates and the clients sign in with, and the port Prometheus scrapes."""
    pod = next(spec for name, spec, _ in _pod_specs(rendered) if name == "mlflow")
    containers = {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}

    def mount_of(container: str, path: str) -> str:
        mounts = containers[container]["volumeMounts"]
        return next(m["name"] for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/"))

    written = containers["auth-config"]["command"][-1]
    read = _environment(rendered, "mlflow")["MLFLOW_AUTH_CONFIG_PATH"]
    assert written == read and mount_of("auth-config", written) == mount_of("mlflow", read) == "access-config"
    exported = next(a.split("=", 1)[1] for a in containers["mlflow"]["args"] if a.startswith("--expose-prometheus="))
    served = _environment(rendered, "mlflow", "metrics")["PROMETHEUS_MULTIPROC_DIR"]
    assert exported == served and mount_of("mlflow", exported) == mount_of("metrics", served)
    job = _environment(rendered, "mlflow-users")
    assert _environment(rendered, "inference-api")["MLFLOW_TRACKING_USERNAME"] == job["MLFLOW_INFERENCE_USERNAME"]
    airflow = read_env_file(REPO / "airflow" / ".env.example")
    assert airflow["MLFLOW_TRACKING_USERNAME"] == job["MLFLOW_TRAINER_USERNAME"]
    scrape = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (target,) = next(j for j in scrape if j["job_name"] == "mlflow")["static_configs"][0]["targets"]
    service = next(o for o in rendered if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow")
    port = next(p for p in service["spec"]["ports"] if f"mlflow:{p['port']}" == target)
    (sidecar_port,) = containers["metrics"]["ports"]
    assert port["targetPort"] == sidecar_port["name"] == "metrics"
    metrics_port = _environment(rendered, "mlflow", "metrics")["MLFLOW_METRICS_PORT"]
    assert int(metrics_port) == sidecar_port["containerPort"]  # the sidecar listens where it is scraped


def test_the_api_stays_available_through_rollouts_drains_and_load(rendered: list[dict[str, Any]]) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    api = objects[("Deployment", "inference-api")]["spec"]
    assert api["replicas"] == 2
    assert api["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = objects[("HorizontalPodAutoscaler", "inference-api")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference-api"}
    assert hpa["minReplicas"] == api["replicas"] < hpa["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "cpu" in api["template"]["spec"]["containers"][0]["resources"]["requests"]  # the HPA's base
    pdb = objects[("PodDisruptionBudget", "inference-api")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= api["template"]["metadata"]["labels"].items()
    assert 0 < pdb["minAvailable"] < api["replicas"]  # a drain can proceed, never to zero
    flush = int(_environment(rendered, "inference-api")["PREDICTION_LOG_FLUSH_SECONDS"])
    assert api["template"]["spec"]["terminationGracePeriodSeconds"] > flush + 5  # preStop pause + flush


def test_the_api_requires_its_reload_token_from_the_generated_secret(rendered: list[dict[str, Any]]) -> None:
    env = _environment(rendered, "inference-api")
    assert env["DEVELOPMENT_MODE"] == "false"  # said explicitly in the ConfigMap
    assert len(env["RELOAD_TOKEN"]) >= 16  # from inference-api-credentials, made by `make k8s-secrets`
    (api,) = [spec for name, spec, _ in _pod_specs(rendered) if name == "inference-api"]
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in api["containers"][0]["env"] if e["name"] == "RELOAD_TOKEN"]
    assert ref["name"].startswith("inference-api-credentials-")  # the generated Secret, never a literal


def test_the_prediction_log_purge_runs_daily_alone_with_the_api_image_and_least_privilege(
    rendered: list[dict[str, Any]],
) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    cronjob = objects[("CronJob", "prediction-log-purge")]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid" and "suspend" not in cronjob
    minute, hour, *every_day = cronjob["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and every_day == ["*", "*", "*"]
    specs = {name: spec for name, spec, _ in _pod_specs(rendered)}
    (purge,), (api,) = specs["prediction-log-purge"]["containers"], specs["inference-api"]["containers"]
    assert purge["image"] == api["image"] and purge["command"] == ["python", "-m", "inference_api.retention"]
    assert purge["envFrom"] == api["envFrom"]  # the API's ConfigMap: the same PREDICTION_LOG_RETENTION_DAYS
    env = _environment(rendered, "prediction-log-purge")
    assert int(env["PREDICTION_LOG_RETENTION_DAYS"]) >= 1 and "RELOAD_TOKEN" not in env
    assert "INFERENCE_DB_PASSWORD" not in env  # not the writer's user
    init = (REPO / "mysql" / "init-databases.sh").read_text()
    assert re.findall(r"^GRANT (.*) TO 'inference_purge'@'%';$", init, re.M) == ["SELECT, DELETE ON inference.*"]
    assert "CREATE USER IF NOT EXISTS 'inference_purge'@'%' IDENTIFIED BY '${INFERENCE_PURGE_DB_PASSWORD}';" in init


def test_load_test_pods_wait_for_the_api_and_read_clean_read_only(rendered: list[dict[str, Any]]) -> None:
    specs = {name: (spec, labels) for name, spec, labels in _pod_specs(rendered)}
    for name in ("locust-master", "locust-worker", "locust-capacity"):
        spec, labels = specs[name]
        (wait,) = spec["initContainers"]
        assert wait["command"] == ["python", "/app/wait_for_api.py", "$(LOCUST_HOST)"], name
        if name != "locust-master":  # the master runs no users: no payloads, no database
            assert labels.get("diabetes-readmission/postgres-client") == "true", name
            assert _environment(rendered, name)["LOADTEST_CLEAN_URL"].startswith("postgresql://clean_reader:")
    assert "LOADTEST_CLEAN_URL" not in _environment(rendered, "locust-master")
    init = (REPO / "postgres" / "init-databases.sh").read_text()
    assert "GRANT SELECT ON TABLES TO clean_reader" in init and "GRANT ALL" not in init


def test_the_capacity_job_runs_one_locust_process_per_cpu_it_may_use(rendered: list[dict[str, Any]]) -> None:
    """New-user review of #24: `--processes=-1` is the node's CPU count (os.cpu_count), not the pod's limit: on
    a 32-core node it forked 32 Locust processes into a 2-CPU, 1 GiB container. It ends with in-flight requests
    finished (`--stop-timeout`), as `make loadtest` does."""
    specs = {name: spec for name, spec, _ in _pod_specs(rendered)}
    (container,) = specs["locust-capacity"]["containers"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"] if "=" in arg)
    assert args["processes"] == str(container["resources"]["limits"]["cpu"])
    assert args["stop-timeout"] == "60"


def test_only_what_people_or_the_airflow_vm_reach_has_a_node_port(rendered: list[dict[str, Any]]) -> None:
    nodeports = {
        o["spec"]["selector"]["app.kubernetes.io/name"]: [p["nodePort"] for p in o["spec"]["ports"]]
        for o in rendered
        if o["kind"] == "Service" and o["spec"]["type"] == "NodePort"
    }
    assert set(nodeports) <= {"postgres", "mlflow", "streamlit", "grafana", "prometheus", "locust-master"}
    ports = [port for found in nodeports.values() for port in found]
    assert len(ports) == len(set(ports)) and all(30000 <= p <= 32767 for p in ports)


def test_deployment_selectors_use_the_name_label_only(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        if obj["kind"] == "Deployment":
            assert set(obj["spec"]["selector"]["matchLabels"]) == {"app.kubernetes.io/name"}, obj["metadata"]["name"]


def test_databases_accept_only_their_clients(rendered: list[dict[str, Any]]) -> None:
    policies = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "NetworkPolicy"}
    for name in ("postgres", "mysql", "minio"):
        policy = policies[name]["spec"]
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert policy["policyTypes"] == ["Ingress"] and policy["ingress"], name
    mysql_clients = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in policies["mysql"]["spec"]["ingress"][0]["from"]
    }
    assert mysql_clients == {"mlflow", "inference-api", "prediction-log-purge", "model-monitor"}
    nodeports = {o["metadata"]["name"] for o in rendered if o["kind"] == "Service" and o["spec"]["type"] == "NodePort"}
    assert "mysql" not in " ".join(nodeports) and "minio" not in " ".join(nodeports)


def test_no_generated_secret_reaches_a_tracked_file(checkout: Path) -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in tracked if f.endswith("secrets.env")], "a secrets.env is tracked"
    assert ".gitignore" in tracked and "secrets.env" in (REPO / ".gitignore").read_text().split()
    generated = []  # the values the examples leave empty (names such as a user name have a default)
    for path in checkout.glob("*/secrets.env"):
        example = read_env_file(REPO / path.parent.name / "secrets.env.example")
        values = read_env_file(path)
        assert set(values) == set(example), path
        generated += [values[key] for key, default in example.items() if not default]
    assert len(generated) >= 8 and all(len(value) >= 24 for value in generated)


def test_strict_validation_rejects_an_unknown_field(rendered: list[dict[str, Any]]) -> None:
    """The schema check above can fail: a misspelt field in a rendered Deployment is refused."""
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(next(o for o in rendered if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


SECRET_LITERAL = re.compile(
    r"""(?ix)
    (?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[a-z_]*   # a secret-looking name
    [\ \t]*[:=][\ \t]*["']?(?!\$[{(])(?!<)(?=[^\s"']*(?-i:[0-9A-Z]))([A-Za-z0-9+/_\-.]{12,})  # a long literal
    |-----BEGIN\ [A-Z ]*PRIVATE\ KEY-----
    |AKIA[0-9A-Z]{16}
    """
)


def secret_literals(text: str) -> list[str]:
    return [m.group(0)[:60] for m in SECRET_LITERAL.finditer(text)]


def test_no_secret_looking_literal_in_tracked_files_or_rendered_manifests(rendered: list[dict[str, Any]]) -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = {}
    for name in tracked:
        path = REPO / name
        if path.suffix in {".png", ".jpg", ".zip", ".gz"} or not path.is_file():
            continue
        hits = secret_literals(path.read_text(encoding="utf-8", errors="replace"))
        if hits:
            found[name] = hits
    assert found == {}
    manifests = yaml.safe_dump_all([o for o in rendered if o["kind"] != "Secret"])  # generated in the scratch copy
    assert secret_literals(manifests) == []


def test_the_secret_scan_sees_a_literal() -> None:
    # The samples are assembled at run time: written out, they would be literals in this tracked file.
    value = "Zx81kQ0p" + "LmN4vB7t"
    assert secret_literals(f'POSTGRES_PASSWORD: "{value}"') != []
    assert secret_literals("aws = " + "AKIA" + "ABCDEFGHIJKLMNOP") != []
    assert secret_literals("password: ${AIRFLOW_DB_PASSWORD}") == []


def test_make_k8s_secrets_shares_names_keeps_existing_values_and_rotates_on_request(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "client").mkdir()
    (tmp_path / "db" / "secrets.env.example").write_text("# the database\nROOT_PASSWORD=\nAPP_PASSWORD=\n")
    (tmp_path / "client" / "secrets.env.example").write_text("APP_PASSWORD=\nMODE=fixed\n")
    script = [sys.executable, str(REPO / "scripts" / "k8s_secrets.py"), str(tmp_path)]

    def values(folder: str) -> dict[str, str]:
        return read_env_file(tmp_path / folder / "secrets.env")

    subprocess.run(script, check=True, capture_output=True)
    first = {"db": values("db"), "client": values("client")}
    assert first["db"]["APP_PASSWORD"] == first["client"]["APP_PASSWORD"]  # one value for both sides
    assert first["db"]["ROOT_PASSWORD"] != first["db"]["APP_PASSWORD"] and len(first["db"]["ROOT_PASSWORD"]) >= 24
    assert first["client"]["MODE"] == "fixed"  # a value given in the example is kept
    assert (tmp_path / "db" / "secrets.env").stat().st_mode & 0o777 == 0o600
    subprocess.run(script, check=True, capture_output=True)
    assert {"db": values("db"), "client": values("client")} == first  # never rotated by a re-run

    rotated = subprocess.run([*script, "--rotate", "APP_PASSWORD"], check=True, capture_output=True, text=True)
    assert "db/secrets.env: 2 value(s) (rotated APP_PASSWORD)" in rotated.stdout
    after = {"db": values("db"), "client": values("client")}
    assert after["db"]["APP_PASSWORD"] == after["client"]["APP_PASSWORD"] != first["db"]["APP_PASSWORD"]
    assert after["db"]["ROOT_PASSWORD"] == first["db"]["ROOT_PASSWORD"]  # only the named value changes
    unknown = subprocess.run([*script, "--rotate", "NO_SUCH_NAME"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "cannot rotate NO_SUCH_NAME: no secrets.env.example" in unknown.stderr
    fixed = subprocess.run([*script, "--rotate", "MODE"], capture_output=True, text=True)
    assert fixed.returncode == 1 and "its value is fixed in the example" in fixed.stderr
    assert {"db": values("db"), "client": values("client")} == after  # a refused rotation writes nothing
    (tmp_path / "db" / "secrets.env").chmod(0o644)
    subprocess.run(script, check=True, capture_output=True)
    assert (tmp_path / "db" / "secrets.env").stat().st_mode & 0o777 == 0o600  # a loosened file is tightened
    assert {"db": values("db"), "client": values("client")} == after


def _checkov(*args: str) -> subprocess.CompletedProcess[str]:
    checkov = REPO / ".venv-checkov" / "bin" / "checkov"
    if not checkov.exists():
        pytest.fail("checkov is missing: `make test` installs it into .venv-checkov (requirements/checkov.txt)")
    return subprocess.run(
        [str(checkov), "--config-file", str(REPO / ".checkov.yaml"), "--skip-download", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _failed_checks(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("Check: ")]


def test_policy_scan_of_the_rendered_manifests_and_dockerfiles(checkout: Path, tmp_path: Path) -> None:
    """checkov passes with only the exceptions documented in .checkov.yaml and the resources' annotations."""
    rendered = tmp_path / "rendered" / "all.yaml"
    rendered.parent.mkdir()
    rendered.write_text(
        subprocess.run(["kubectl", "kustomize", str(checkout)], capture_output=True, text=True, check=True).stdout
    )
    manifests = _checkov("--framework", "kubernetes", "-d", str(rendered.parent))
    assert "Passed checks:" in manifests.stdout, manifests.stdout[-2000:] + manifests.stderr[-2000:]
    assert manifests.returncode == 0 and "Failed checks: 0," in manifests.stdout, _failed_checks(manifests.stdout)
    dockerfiles = [str(p.relative_to(REPO)) for p in sorted(REPO.glob("*/Dockerfile"))]
    images = _checkov("--framework", "dockerfile", *[arg for path in dockerfiles for arg in ("-f", path)])
    assert images.returncode == 0 and "Failed checks: 0," in images.stdout, _failed_checks(images.stdout)
    annotated = [line for line in rendered.read_text().splitlines() if "checkov.io/skip" in line]
    assert len(annotated) <= 6 and all("=" in line and len(line.split("=", 1)[1]) > 20 for line in annotated)


def test_the_policy_scan_fails_a_privileged_container(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    import copy

    deployment = copy.deepcopy(
        next(o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(deployment))
    result = _checkov("--framework", "kubernetes", "-d", str(tmp_path))
    assert result.returncode != 0
    assert any("CKV_K8S_16" in line for line in _failed_checks(result.stdout))  # privileged container


def test_the_airflow_vm_settings_match_the_cluster(rendered: list[dict[str, Any]]) -> None:
    """airflow/.env.example's NodePorts, database names and users are the ones the manifests create."""
    example = read_env_file(REPO / "airflow" / ".env.example")
    nodeports = {
        o["metadata"]["name"]: o["spec"]["ports"][0]["nodePort"]
        for o in rendered
        if o["kind"] == "Service" and o["spec"]["type"] == "NodePort"
    }
    assert int(example["POSTGRES_NODE_PORT"]) == nodeports["postgres-nodeport"]
    assert int(example["MLFLOW_NODE_PORT"]) == nodeports["mlflow-nodeport"]
    init = (REPO / "postgres" / "init-databases.sh").read_text()
    for store in ("RAW", "CLEAN"):
        name, user = example[f"{store}_DB_NAME"], example[f"{store}_DB_USER"]
        assert f"CREATE DATABASE {name} OWNER {user};" in init, store
