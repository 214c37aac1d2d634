"""scripts/test-tools.sh, the installer `make test` and CI share: installs with apt where it may, otherwise
stops at once with the exact command; a missing or too old kubectl is named (its tests skip)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shims(folder: Path, scripts: dict[str, str]) -> Path:
    """A PATH folder holding only python3 and the given shell-script commands."""
    folder.mkdir()
    (folder / "python3").symlink_to(sys.executable)
    for tool in ("env", "chmod"):
        (folder / tool).symlink_to(f"/usr/bin/{tool}")
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def _run(path: Path, chromium: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(REPO / "scripts" / "test-tools.sh")],
        env={"PATH": str(path), "CHROMIUM": str(chromium)},
        capture_output=True,
        text=True,
        timeout=300,
    )


# The image tools (tests/test_images.py), present in the cases about the other tools.
CONTAINER_TOOLS = dict.fromkeys(
    ["buildah", "podman", "runc", "mmdebstrap", "newuidmap", "fuse-overlayfs", "catatonit"], ""
)


def test_without_root_or_sudo_it_stops_with_the_exact_command(tmp_path: Path) -> None:
    path = _shims(tmp_path / "bin", {"id": "echo 1000", "sudo": "exit 1", "apt-get": "exit 0"})
    done = _run(path, tmp_path / "no-chromium")
    assert done.returncode == 1
    assert (
        "run: sudo apt-get install -y chromium prometheus docker-compose buildah podman runc mmdebstrap uidmap "
        "fuse-overlayfs" in done.stderr  # and catatonit, unless podman's own copy is on this machine
    )


def test_as_root_it_installs_what_is_missing_with_apt(tmp_path: Path) -> None:
    calls, chromium, shims = tmp_path / "apt-calls", tmp_path / "chromium", tmp_path / "bin"
    installs = (  # a stand-in apt-get that records its call and puts the two programs in place
        f'echo "$DEBIAN_FRONTEND $*" >> {calls}; printf "#!/bin/sh\\n" > {chromium}; '
        f'printf "#!/bin/sh\\n" > {shims}/docker-compose; chmod +x {chromium} {shims}/docker-compose'
    )
    tools = {
        "id": "echo 0",
        "apt-get": installs,
        "promtool": "",
        "prometheus": "",
        "kubectl": "exit 1",
        **CONTAINER_TOOLS,
    }
    done = _run(_shims(shims, tools), chromium)
    assert done.returncode == 0, done.stderr
    assert calls.read_text() == "noninteractive install -y -q --no-install-recommends chromium docker-compose\n"
    assert "installing chromium docker-compose with apt-get" in done.stdout
    assert "kubectl >= 1.21 is missing" in done.stderr


def test_a_package_that_installs_but_does_not_give_the_tool_is_named(tmp_path: Path) -> None:
    """Ubuntu's chromium package is a snap: apt-get succeeds, /usr/bin/chromium stays missing."""
    tools = {
        "id": "echo 0",
        "apt-get": "exit 0",
        "promtool": "",
        "prometheus": "",
        "docker-compose": "",
        **CONTAINER_TOOLS,
    }
    done = _run(_shims(tmp_path / "bin", tools), tmp_path / "no-chromium")
    assert done.returncode == 1
    assert "installed chromium but chromium is still not usable" in done.stderr


def test_nothing_to_install_and_an_old_kubectl_is_named(tmp_path: Path) -> None:
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    old = """echo '{"clientVersion": {"major": "1", "minor": "20"}}'"""
    tools = {"promtool": "", "prometheus": "", "docker-compose": "", "apt-get": "exit 9", **CONTAINER_TOOLS}
    done = _run(_shims(tmp_path / "old", {**tools, "kubectl": old}), chromium)
    assert done.returncode == 0 and "too old" in done.stderr and "installing" not in done.stdout
    new = """echo '{"clientVersion": {"major": "1", "minor": "31+"}}'"""
    done = _run(_shims(tmp_path / "new", {**tools, "kubectl": new}), chromium)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
