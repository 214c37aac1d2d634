"""`podman kube play` of the rendered Deployments of inference-api, streamlit and mlflow, from the built images
(`built_images`, tests/conftest.py): each pod and container reaches Running and the container's own probe
answers on the manifest's port. What podman plays, what it cannot (Services, NetworkPolicies, the HPA, the
PDB, CronJobs, Jobs) and where the test does the kubelet's part for podman 4.3: tests/support/kubeplay.py.
The played pods use the manifests' ports (5000, 8000, 8501, 9101; moto as MinIO on 9000): they must be free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import podrun
import pytest
from imagestack import report
from kubeplay import played, pod_states, render, require_free, secret_values
from mlflowstack import wait_http
from sqlalchemy import Connection, create_engine, text

from testsupport import init_sql

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("service", "port", "probe"), [("inference-api", 8000, "livenessProbe"), ("streamlit", 8501, "readinessProbe")]
)
def test_podman_kube_play_runs_the_rendered_deployment(
    built_images: dict[str, str], service: str, port: int, probe: str, tmp_path: Path
) -> None:
    """The API's liveness (its readiness needs the cluster's MLflow: tests/test_images.py gives it one) and the
    page's readiness, each on the manifest's port."""
    require_free(port)
    with played(render(service, tmp_path), tmp_path) as deployment:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == built_images[service]
        pod = f"{deployment['metadata']['name']}-pod-0"
        waited = podrun.wait_probe(f"{pod}-{container['name']}", container[probe], {str(port): port}, 300)
        states = pod_states(pod)
        report(f"kube-play-{service}", {"states": states, "probe": f"{probe} passed after {waited:.1f} s"})
    assert states["pod"] == "Running" and set(states["containers"].values()) == {"running"}, states


CLUSTER_NAMES = ["mysql", "postgres", "minio"]  # the MLflow pod's in-cluster peers, here on 127.0.0.1


def test_podman_kube_play_runs_the_mlflow_deployment(
    built_images: dict[str, str], mysql_admin_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    """Both init containers complete (schema upgrade, auth configuration), the server and the metrics sidecar
    reach Running, and the manifest's probes pass: liveness (/health on 5000), readiness (access.py probe: the
    admin reads the registry), the sidecar's port. The cluster's names resolve to 127.0.0.1, where MariaDB and
    PostgreSQL hold what mysql/ and postgres/init-databases.sh make for MLflow (their statements, the generated
    passwords, the cluster's database and user names) and moto listens on MinIO's port 9000."""
    require_free(5000, 9000, 9101)
    docs = render("mlflow", tmp_path)
    secret = next(v for name, v in secret_values(docs).items() if name.startswith("mlflow-credentials-"))
    conf = _conf_with_cluster_names(tmp_path)
    with (
        cluster_databases(secret, mysql_admin_url, postgres_admin_url),
        moto_on(9000, "mlflow", tmp_path),
        memory_folder() as memory,
        played(docs, tmp_path, lambda d: _as_on_this_machine(d, memory), {"CONTAINERS_CONF": str(conf)}) as deployment,
    ):
        server, sidecar = deployment["spec"]["template"]["spec"]["containers"]
        live = podrun.wait_probe("mlflow-pod-0-mlflow", server["livenessProbe"], {"5000": 5000}, 600)
        ready = podrun.wait_probe("mlflow-pod-0-mlflow", server["readinessProbe"], {}, 300)
        podrun.wait_probe("mlflow-pod-0-metrics", sidecar["livenessProbe"], {"9101": 9101}, 120)
        states = pod_states("mlflow-pod-0")
        report(
            "kube-play-mlflow",
            {"states": states, "live_after_s": round(live, 1), "ready_after_more_s": round(ready, 1)},
        )
    assert states["pod"] == "Running" and set(states["containers"].values()) == {"running"}, states


@contextlib.contextmanager
def memory_folder() -> Iterator[Path]:
    """A folder in /dev/shm owned by the pods' user (10001), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="access-config-", dir="/dev/shm"))
    os.chown(folder, 10001, 10001)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_on_this_machine(deployment: dict[str, Any], memory: Path) -> None:
    pod = deployment["spec"]["template"]["spec"]
    # podman 4.3 keeps a `medium: Memory` emptyDir on disk (containers/podman#21524); the basic-auth
    # configuration holds the user store's password, so it gets a folder in memory, as in the cluster.
    for volume in pod["volumes"]:
        if (volume.get("emptyDir") or {}).get("medium") == "Memory":
            volume.pop("emptyDir")
            volume["hostPath"] = {"path": str(memory), "type": "Directory"}
    pod["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": CLUSTER_NAMES}]
    # podman 4.3 gives init containers the pod's restart policy (Always): a finished db-upgrade starts again and
    # `kube play` fails to remove it ("cannot remove container ... as it is running"). The kubelet never restarts
    # a completed init container; OnFailure is that behaviour here.
    pod["restartPolicy"] = "OnFailure"


def _conf_with_cluster_names(folder: Path) -> Path:
    """A containers.conf whose base hosts file names the cluster's peers: podman 4.3 ignores hostAliases on the
    host network and reads that file there."""
    (folder / "hosts").write_text(f"127.0.0.1 localhost {' '.join(CLUSTER_NAMES)}\n")
    conf = folder / "containers.conf"
    base_hosts = f'[containers]\nbase_hosts_file = "{folder / "hosts"}"\n'
    conf.write_text(podrun.CONTAINERS_CONF.read_text().replace("[containers]\n", base_hosts, 1))
    return conf


def _taken(m: Connection, p: Connection) -> list[str]:
    checks = [
        ("MariaDB database mlflow", m, "SHOW DATABASES LIKE 'mlflow'"),
        ("MariaDB user 'mlflow'@'%'", m, "SELECT 1 FROM mysql.user WHERE User = 'mlflow' AND Host = '%'"),
        ("PostgreSQL role mlflow_auth", p, "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow_auth'"),
        ("PostgreSQL database mlflow_auth", p, "SELECT 1 FROM pg_database WHERE datname = 'mlflow_auth'"),
    ]
    return [what for what, conn, sql in checks if conn.execute(text(sql)).first()]


@contextlib.contextmanager
def cluster_databases(secret: dict[str, str], mysql_admin_url: str, postgres_admin_url: str) -> Iterator[None]:
    """MLflow's databases and users as the cluster's init scripts make them, under the cluster's names, on this
    machine's MariaDB and PostgreSQL; dropped afterwards. Refuses a server that already has any of them."""
    maria = create_engine(mysql_admin_url, isolation_level="AUTOCOMMIT")
    pg = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with maria.connect() as m, pg.connect() as p:
        taken = _taken(m, p)
    if taken:
        maria.dispose()
        pg.dispose()
        pytest.fail(
            f"{', '.join(taken)} already exist here; this test makes its own under the cluster's names. A failed "
            "run's leftovers (check that nothing else uses them)? MariaDB: DROP DATABASE mlflow; DROP USER 'mlflow'@'%'; PostgreSQL: DROP DATABASE "
            "mlflow_auth; DROP ROLE mlflow_auth"
        )
    try:
        with maria.connect() as m, pg.connect() as p:
            for line in init_sql(REPO / "mysql" / "init-databases.sh", "mlflow"):
                m.execute(text(line.replace("${MLFLOW_DB_PASSWORD}", secret["MLFLOW_DB_PASSWORD"])))
            password = secret["MLFLOW_AUTH_DB_PASSWORD"].replace("'", "''")
            for line in init_sql(REPO / "postgres" / "init-databases.sh", "mlflow_auth"):
                p.execute(text(line.replace(":'mlflow_auth_password'", f"'{password}'")))
        yield
    finally:
        with maria.connect() as m, pg.connect() as p:
            m.execute(text("DROP DATABASE IF EXISTS mlflow"))
            m.execute(text("DROP USER IF EXISTS 'mlflow'@'%'"))
            p.execute(text("DROP DATABASE IF EXISTS mlflow_auth WITH (FORCE)"))
            p.execute(text("DROP ROLE IF EXISTS mlflow_auth"))
        maria.dispose()
        pg.dispose()


@contextlib.contextmanager
def moto_on(port: int, bucket: str, folder: Path) -> Iterator[None]:
    """moto's S3 server on 127.0.0.1:``port`` with ``bucket`` (MinIO's stand-in), stopped afterwards."""
    import boto3

    log = (folder / "moto.log").open("wb")
    moto = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", moto, 60)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        yield
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        log.close()
