"""The built images for the tests (``build_images``, ``report``) and the MLflow pod of mlflow/deployment.yaml and the users Job of mlflow/job-users.yaml, run from the built
image with podman (tests/support/podrun.py): the db-upgrade and auth-config init containers, the server with
the manifest's arguments (basic-auth app included), the metrics sidecar, then the users Job, each with its
securityContext and volumes. As in tests/support/mlflowstack.py only addresses change: MariaDB for MySQL, a
scratch PostgreSQL database for the user store, moto for MinIO, free loopback ports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import podrun
import yaml
from mlflowstack import (
    DEPLOYMENT,
    USERS_JOB,
    _start_moto,
    container_env,
    free_port,
    generated_secrets,
    server_args,
    stack_addresses,
)

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "images"  # figures of the image tests, one JSON file each


def images_script() -> ModuleType:
    """scripts/images.py as a module (the builder `make images` uses)."""
    spec = importlib.util.spec_from_file_location("images", REPO / "scripts" / "images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["images"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def report(name: str, payload: Any) -> None:
    """Print a figure and keep it as OUTPUT/<name>.json."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"{name}: {json.dumps(payload)}")


def build_images() -> dict[str, str]:
    """Every service image built with buildah (cached layers reused), by service: its kustomization's reference.
    The base is pulled, or made by scripts/stand-in-base.sh where it cannot be (images then carry the stand-in's
    label `org.readmission.stand-in`: test images, never to be pushed). Needs root (rootful podman)."""
    from testsupport import _unavailable

    missing = [tool for tool in ("buildah", "podman") if not shutil.which(tool)]
    if missing:
        _unavailable(f"{', '.join(missing)} missing: run scripts/test-tools.sh (apt) to build and run the images")
    if os.geteuid() != 0:
        _unavailable("the image tests run rootful podman: run them as root (sudo make e2e)")
    images = images_script()
    base = subprocess.run([str(REPO / "scripts" / "stand-in-base.sh")], capture_output=True, text=True)
    assert base.returncode == 0, base.stdout + base.stderr
    command = images.builder(docker_allowed=False)  # podman runs them, from buildah's storage
    images.check_base(images.engine(command), allow_stand_in=True)
    built, seconds = {}, {}
    for service in images.SERVICES:
        image = images.image_of(service)
        seconds[service] = round(images.build(image, command), 1)
        built[service] = image.reference
    sizes = {s: round(images.size_bytes(ref, images.engine(command)) / 1e6) for s, ref in built.items()}
    report("build", {"seconds": seconds, "size_mb": sizes, "stand_in_base": images.stand_in_base("podman")})
    return built


@dataclass
class ContainerStack:
    """A running MLflow pod of containers, what a test needs to reach it, and what to stop."""

    tracking: str
    secret: dict[str, str]
    containers: list[str] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)
    ready_seconds: float = 0.0
    folders: dict[str, Path] = field(default_factory=dict)

    def stop(self) -> None:
        """Remove the containers and the pod's volumes (the auth configuration holds a password), stop moto."""
        podrun.remove(*self.containers)
        podrun.remove_folders(self.folders)
        for proc in self.processes:
            proc.terminate()
            proc.wait(timeout=30)


def pod_spec(path: Path) -> dict[str, Any]:
    """The pod template's spec of a Deployment or Job manifest."""
    return dict(yaml.safe_load(path.read_text())["spec"]["template"]["spec"])


def _run_to_end(
    name: str, image: str, pod: dict[str, Any], spec: dict[str, Any], env: dict[str, str], folders: Mapping[str, Path]
) -> None:
    podrun.start(podrun.run_command(name, image, pod, spec, env, folders), env)
    code = podrun.wait_exit(name)
    assert code == 0, f"{spec['name']} exited with {code}:\n{podrun.logs(name)[-4000:]}"


def start_mlflow_pod(
    image: str, mysql_url: str, auth_db_url: str, folder: Path, config: dict[str, str]
) -> ContainerStack:
    """Run the MLflow pod and the users Job from ``image``; the running stack (call ``stop``)."""
    bucket = config["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    moto, s3 = _start_moto(folder, bucket)
    port, metrics_port = free_port(), free_port()
    stack = ContainerStack(f"http://127.0.0.1:{port}", generated_secrets(), processes=[moto])
    addresses = stack_addresses(s3, mysql_url, auth_db_url, stack.tracking, metrics_port)
    try:
        _start_containers(stack, image, folder, config, addresses, (port, metrics_port))
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_containers(
    stack: ContainerStack,
    image: str,
    folder: Path,
    config: dict[str, str],
    addresses: dict[str, str],
    ports: tuple[int, int],
) -> None:
    pod, job = pod_spec(DEPLOYMENT), pod_spec(USERS_JOB)
    specs = {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}
    folders = stack.folders = podrun.pod_folders(pod, folder / "pod")
    suffix = uuid.uuid4().hex[:6]

    def env_of(spec: dict[str, Any]) -> dict[str, str]:
        return container_env(spec, config, stack.secret, addresses)

    for init in ("db-upgrade", "auth-config"):
        stack.containers.append(f"mlflow-{init}-{suffix}")
        _run_to_end(stack.containers[-1], image, pod, specs[init], env_of(specs[init]), folders)
    server_env = env_of(specs["mlflow"])
    stack.containers.append(f"mlflow-{suffix}")
    args = server_args(specs["mlflow"], server_env, ports[0])
    podrun.start(
        podrun.run_command(stack.containers[-1], image, pod, specs["mlflow"], server_env, folders, args), server_env
    )
    stack.ready_seconds = podrun.wait_probe(
        stack.containers[-1], specs["mlflow"]["readinessProbe"], {}, exec_env={"MLFLOW_PORT": str(ports[0])}
    )
    stack.containers.append(f"mlflow-metrics-{suffix}")
    sidecar_env = env_of(specs["metrics"])
    podrun.start(
        podrun.run_command(stack.containers[-1], image, pod, specs["metrics"], sidecar_env, folders), sidecar_env
    )
    podrun.wait_probe(stack.containers[-1], specs["metrics"]["livenessProbe"], {"metrics": ports[1]})
    users = job["containers"][0]
    stack.containers.append(f"mlflow-users-{suffix}")
    _run_to_end(stack.containers[-1], image, job, users, env_of(users), podrun.pod_folders(job, folder / "job"))
