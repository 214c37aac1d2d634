"""Run the manifests' containers from the built images with podman, as the kubelet would run them.

`run_command` turns a pod's container (from a manifest) into a `podman run` command line: the image, the
container's command and args ($(VAR) expanded), its environment (values passed through podman's own
environment, never on the command line), and the pod's and container's security settings:
runAsUser/runAsGroup -> --user, runAsNonRoot checked, readOnlyRootFilesystem -> --read-only without podman's
extra writable tmpfs mounts, capabilities -> --cap-drop/--cap-add, allowPrivilegeEscalation: false ->
no-new-privileges. Every volume of the pod (emptyDir in these manifests) is a folder of the test, owned by the
pod's user and mounted where the manifest mounts it, read-only where it says so: a program that writes anywhere
else fails as it would in the cluster. Containers use the host's network (loopback addresses only here) and
the tests replace only addresses and ports, as tests/support/mlflowstack.py does for processes.

Not carried over: resource limits (cgroup limits cannot be set on this machine), Docker HEALTHCHECKs (the
kubelet ignores them too: the manifests' probes are what `probe` checks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "tests" / "containers" / "containers.conf"


def podman_env(values: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment podman runs with: this machine's containers.conf for tests, plus ``values``."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **(values or {})}


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a command, an argument or an env value: a defined VAR is replaced, an
    undefined one left as written."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def security_flags(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """podman flags for the pod's and the container's securityContext (the container's settings win)."""
    merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    flags: list[str] = []
    if merged.get("runAsNonRoot"):
        assert user not in (None, 0), f"container {container['name']}: runAsNonRoot needs a non-zero runAsUser"
    if user is not None:
        flags += ["--user", f"{user}:{group if group is not None else user}"]
    if merged.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = merged.get("capabilities", {})
    flags += [f"--cap-drop={c.lower()}" for c in capabilities.get("drop", [])]
    flags += [f"--cap-add={c.lower()}" for c in capabilities.get("add", [])]
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def pod_folders(pod: Mapping[str, Any], base: Path) -> dict[str, Path]:
    """A folder for each volume of the pod (an emptyDir), owned by the pod's user: under ``base``, or in
    /dev/shm for `medium: Memory` (what the kubelet gives it: nothing on disk; remove it with
    ``remove_folders``)."""
    context = pod.get("securityContext", {})
    uid, gid = context.get("runAsUser", 0), context.get("runAsGroup", context.get("runAsUser", 0))
    folders = {}
    for volume in pod.get("volumes", []):
        assert "emptyDir" in volume, f"volume {volume['name']}: only emptyDir volumes are run here"
        if (volume["emptyDir"] or {}).get("medium") == "Memory":
            folder = Path(tempfile.mkdtemp(prefix=f"{volume['name']}-", dir="/dev/shm"))
        else:
            folder = base / f"volume-{volume['name']}"
            folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, uid, gid)
        folders[volume["name"]] = folder
    return folders


def remove_folders(folders: Mapping[str, Path]) -> None:
    """Remove the pod's volume folders (memory ones included)."""
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)


def volume_flags(container: Mapping[str, Any], folders: Mapping[str, Path]) -> list[str]:
    """-v flags mounting the pod's volume folders where the container mounts them."""
    flags = []
    for mount in container.get("volumeMounts", []):
        mode = "ro" if mount.get("readOnly") else "rw"
        flags += ["-v", f"{folders[mount['name']]}:{mount['mountPath']}:{mode}"]
    return flags


def run_command(
    name: str,
    image: str,
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    folders: Mapping[str, Path],
    args: list[str] | None = None,
) -> list[str]:
    """The `podman run` command of ``container`` (detached; ``args`` replace the manifest's when given). Run
    it with ``podman_env(env)``: each variable is passed by name, its value from that environment."""
    command = ["podman", "run", "--detach", "--name", name, "--network", "host", "--no-healthcheck"]
    command += security_flags(pod, container) + volume_flags(container, folders)
    for key in env:
        command += ["--env", key]
    if "command" in container:
        command += ["--entrypoint", json.dumps([expand(c, env) for c in container["command"]])]
    command.append(image)
    command += args if args is not None else [expand(a, env) for a in container.get("args", [])]
    return command


def start(command: list[str], env: Mapping[str, str]) -> str:
    """Start a container from ``run_command``'s command line; its name. Raises with podman's output."""
    done = subprocess.run(command, env=podman_env(env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"podman run failed: {done.stderr[-3000:]}"
    return command[command.index("--name") + 1]


def logs(name: str) -> str:
    """The container's output so far (stdout and stderr)."""
    done = subprocess.run(["podman", "logs", name], env=podman_env(), capture_output=True, text=True)
    return done.stdout + done.stderr


def state(name: str) -> tuple[str, int]:
    """The container's status (running, exited, ...) and exit code."""
    done = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    status, code = done.stdout.split()
    return status, int(code)


def wait_exit(name: str, seconds: float = 900) -> int:
    """Wait for the container to exit; its exit code (AssertionError with its logs after ``seconds``)."""
    done = subprocess.run(["podman", "wait", name], env=podman_env(), capture_output=True, text=True, timeout=seconds)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def remove(*names: str) -> None:
    """Stop (SIGTERM, then SIGKILL after 30 s) and remove the containers; missing ones are ignored."""
    if names:
        subprocess.run(
            ["podman", "rm", "--force", "--ignore", "--time", "30", *names],
            env=podman_env(),
            capture_output=True,
            timeout=120,
        )


def probe_once(
    name: str, probe: Mapping[str, Any], ports: Mapping[str, int], exec_env: Mapping[str, str] | None = None
) -> bool:
    """One run of a manifest probe (httpGet, tcpSocket or exec) against container ``name``; ``ports`` maps the
    probe's port (name or number, as text) to the port the container really listens on, ``exec_env`` gives an
    exec probe the variables that tell it the moved port."""
    if "exec" in probe:
        flags = [f"--env={key}={value}" for key, value in (exec_env or {}).items()]
        command = ["podman", "exec", *flags, name, *probe["exec"]["command"]]
        return subprocess.run(command, env=podman_env(), capture_output=True, timeout=60).returncode == 0
    action = probe.get("httpGet") or probe["tcpSocket"]
    port = ports[str(action["port"])]
    if "tcpSocket" in probe:
        with socket.socket() as s:
            s.settimeout(5)
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{action['path']}", timeout=10) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


def wait_probe(
    name: str,
    probe: Mapping[str, Any],
    ports: Mapping[str, int],
    seconds: float = 600,
    exec_env: Mapping[str, str] | None = None,
) -> float:
    """Run ``probe`` until it passes; seconds it took. AssertionError with the logs if the container exits or
    ``seconds`` pass first."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if probe_once(name, probe, ports, exec_env):
            return time.monotonic() - started
        status, code = state(name)
        assert status == "running", f"{name} {status} with {code} before its probe passed:\n{logs(name)[-4000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{name}: probe did not pass within {seconds} s:\n{logs(name)[-4000:]}")


def remove_secret(name: str) -> None:
    """Remove a podman secret; a missing one is ignored."""
    subprocess.run(["podman", "secret", "rm", name], env=podman_env(), capture_output=True)
