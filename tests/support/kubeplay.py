"""`podman kube play` of a rendered kustomization (`kubectl kustomize <service>`), for tests/test_kube_play.py.

podman plays pods, not the cluster around them: of a rendered folder it plays the Deployment and its
ConfigMaps. Left out: Service, NetworkPolicy, HorizontalPodAutoscaler, PodDisruptionBudget, CronJob, Job.
Where podman 4.3 (Debian 12) differs from the kubelet, ``playable`` does the kubelet's part, nothing more:
- each Secret's data becomes a podman secret of the same name (podman reads secretKeyRef values from there);
- $(VAR) in env values, command and args is expanded from the variables defined before (podman does not);
- the containers' `ports` are dropped and the probes' named ports replaced by their numbers (podman refuses
  port mappings on the host network); replicas 1.
Security settings, env and ConfigMaps are played as rendered; volumes too, except where a test says so
(podman 4.3 keeps a `medium: Memory` emptyDir on disk, so the MLflow test mounts a /dev/shm folder there).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import podrun
import yaml

from testsupport import _unavailable

REPO = Path(__file__).resolve().parents[2]
PLAYED = {"Deployment", "ConfigMap"}


def render(service: str, folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a copy of ``service``'s folder in ``folder``, with secrets generated as
    `make k8s-secrets` does; the rendered documents."""
    if shutil.which("kubectl") is None:
        _unavailable("kubectl is not installed (it renders the kustomization)")
    shutil.copytree(REPO / service, folder / service, ignore=shutil.ignore_patterns("secrets.env", "__pycache__"))
    if (folder / service / "secrets.env.example").exists():
        command = [sys.executable, str(REPO / "scripts" / "k8s_secrets.py"), str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    try:
        command = ["kubectl", "kustomize", str(folder / service)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        (folder / service / "secrets.env").unlink(missing_ok=True)  # the generated passwords: kept in memory only
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def secret_values(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each rendered Secret's decoded values, by Secret name."""
    return {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }


def playable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents `podman kube play` runs, changed as the module's docstring says (a copy of nothing: the
    Deployments in ``docs`` are changed in place)."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = secret_values(docs)
    played = [doc for doc in docs if doc["kind"] in PLAYED]
    for doc in played:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 1
            pod = doc["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                _number_the_probe_ports(container)
                _expand_as_the_kubelet_does(container, config_maps, secrets)
    return played


def _expand_as_the_kubelet_does(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]
) -> None:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            entry["value"] = env[entry["name"]] = podrun.expand(entry.get("value", ""), env)
    for key in ("command", "args"):
        if key in container:
            container[key] = [podrun.expand(part, env) for part in container[key]]


def _number_the_probe_ports(container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container.pop("ports", []) if "name" in p}
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind, {})
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if action and action["port"] in ports:
            action["port"] = ports[action["port"]]


@contextlib.contextmanager
def played(
    docs: list[dict[str, Any]],
    folder: Path,
    adjust: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Make the podman secrets of ``docs``' Secrets and play ``playable(docs)`` on the host network
    (``adjust`` changes the Deployment first, ``env`` adds to podman's environment); yields the played
    Deployment. Afterwards, also after a failure, the pod and the secrets are removed."""
    to_play = playable(docs)
    deployment = next(d for d in to_play if d["kind"] == "Deployment")
    if adjust:
        adjust(deployment)
    play_file = folder / "play.yaml"  # holds expanded passwords (the kubelet's work): owner-only, removed after
    play_file.touch(mode=0o600)
    play_file.write_text(yaml.safe_dump_all(to_play))
    pod = f"{deployment['metadata']['name']}-pod-0"
    made: list[str] = []
    try:
        for name, values in secret_values(docs).items():
            _make_secret(name, values, folder)
            made.append(name)
        play = ["podman", "kube", "play", "--network", "host", str(play_file)]
        done = subprocess.run(play, env=podrun.podman_env(env), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr + pod_logs(pod)
        yield deployment
    finally:
        _down(play_file, pod, made)


def _down(play_file: Path, pod: str, secrets: list[str]) -> None:
    """Remove the played pod and the secrets; fail naming the commands that finish the job if podman cannot."""
    try:
        down = subprocess.run(
            ["podman", "kube", "down", str(play_file)],
            env=podrun.podman_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert down.returncode == 0, f"`podman kube down` failed ({down.stderr.strip()}): run `podman pod rm -f {pod}`"
    finally:
        play_file.unlink(missing_ok=True)
        for name in secrets:
            podrun.remove_secret(name)


def _make_secret(name: str, values: dict[str, str], folder: Path) -> None:
    """A podman secret holding the Secret's data as podman 4.3's kube play reads it (JSON of base64 values)."""
    listed = subprocess.run(
        ["podman", "secret", "ls", "--format", "{{.Name}}"], env=podrun.podman_env(), capture_output=True, text=True
    )
    generator = name.rsplit("-", 1)[0] + "-"  # kustomize's name before its content hash
    stale = [s for s in listed.stdout.split() if s.startswith(generator)]
    assert not stale, f"podman secrets {stale} exist already (a killed run's?): `podman secret rm {' '.join(stale)}`"
    path = folder / f"{name}.json"
    path.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()}))
    try:
        command = ["podman", "secret", "create", name, str(path)]
        done = subprocess.run(command, env=podrun.podman_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        path.unlink()


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


def require_free(*ports: int) -> None:
    """Fail naming the port when something already listens on 127.0.0.1 there (the played pods use the
    manifests' ports)."""
    for port in ports:
        with socket.socket() as s:
            busy = s.connect_ex(("127.0.0.1", port)) == 0
        assert not busy, (
            f"port {port} is in use (a `make run`, or a pod a killed run left: `podman pod ls`): the played pod listens "
            "there; stop it and run again"
        )
