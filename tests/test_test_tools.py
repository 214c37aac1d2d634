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


def test_without_root_or_sudo_it_stops_with_the_exact_command(tmp_path: Path) -> None:
    path = _shims(tmp_path / "bin", {"id": "echo 1000", "sudo": "exit 1", "apt-get": "exit 0"})
    done = _run(path, tmp_path / "no-chromium")
    assert done.returncode == 1
    assert "run: sudo apt-get install -y chromium prometheus docker-compose" in done.stderr


def test_as_root_it_installs_what_is_missing_with_apt(tmp_path: Path) -> None:
    calls = tmp_path / "apt-calls"
    path = _shims(
        tmp_path / "bin",
        {"id": "echo 0", "apt-get": f'echo "$@" >> {calls}', "promtool": "", "prometheus": "", "kubectl": "exit 1"},
    )
    done = _run(path, tmp_path / "no-chromium")
    assert done.returncode == 0, done.stderr
    assert calls.read_text().split("\n")[0] == "install -y -q chromium docker-compose"
    assert "installing chromium docker-compose with apt-get" in done.stdout
    assert "kubectl >= 1.21 is missing" in done.stderr


def test_nothing_to_install_and_an_old_kubectl_is_named(tmp_path: Path) -> None:
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    old = """echo '{"clientVersion": {"major": "1", "minor": "20"}}'"""
    tools = {"promtool": "", "prometheus": "", "docker-compose": "", "apt-get": "exit 9"}
    done = _run(_shims(tmp_path / "old", {**tools, "kubectl": old}), chromium)
    assert done.returncode == 0 and "too old" in done.stderr and "installing" not in done.stdout
    new = """echo '{"clientVersion": {"major": "1", "minor": "31+"}}'"""
    done = _run(_shims(tmp_path / "new", {**tools, "kubectl": new}), chromium)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
