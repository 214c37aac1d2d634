"""One virtualenv per serving framework that bench/api.py compares ours with, made from the package registry.

Each peer's virtualenv (``var/bench-peers/<peer>/``) holds the framework at its pin in
requirements/bench-peers.txt and this project's library installed editable, with the scikit-learn, numpy,
pandas, scipy, MLflow, skops and numba pins of requirements/lib.txt as constraints (and the peer's own, if
requirements/bench-peers-<peer>.txt exists): every server loads the champion with the same code and computes
the same probabilities. A virtualenv is reused while its pins (and Python's version) are those it was made
with; otherwise it is made anew. uv (.venv/bin/uv, as the Makefile uses) installs when it is there, else pip.
To make one by hand:

    .venv/bin/python bench/peers/venvs.py litserve bentoml mlserver kserve
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "requirements" / "bench-peers.txt"
LIB_PINS = ROOT / "requirements" / "lib.txt"
HOME = ROOT / "var" / "bench-peers"
# What the model's arithmetic depends on: these stay at our .venv's versions in every peer's virtualenv.
SHARED = (
    *("scikit-learn", "numpy", "pandas", "scipy", "mlflow", "mlflow-skinny", "skops", "numba", "llvmlite"),
    *("joblib", "threadpoolctl", "pyarrow"),
)
# kserve 0.21 declares pandas<3 (its codecs); ours is 3.x, which its model server runs with: overridden.
OVERRIDES = {"kserve": ("pandas",)}


class PeerUnavailableError(RuntimeError):
    """The peer's virtualenv could not be made; the message says why, in one line."""


def _pins(path: Path) -> dict[str, str]:
    """``name -> name==version`` of a pin file (comments and indented 'via' lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            requirement = line.split("#", 1)[0].strip()
            pins[requirement.split("==", 1)[0].split("[", 1)[0].lower()] = requirement
    return pins


def _extra(peer: str) -> list[str]:
    """The peer's own constraints (requirements/bench-peers-<peer>.txt), for a dependency it breaks with."""
    path = PINS.with_name(f"bench-peers-{peer}.txt")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def requirements(peer: str) -> tuple[str, list[str], list[str]]:
    """The peer's pin, the constraints (our shared pins, its own) and the overrides it is installed with."""
    peers = _pins(PINS)
    if peer not in peers:
        raise PeerUnavailableError(f"{peer} has no pin in {PINS.relative_to(ROOT)}")
    lib = _pins(LIB_PINS)
    shared = [lib[name] for name in SHARED if name in lib] + _extra(peer)
    overrides = [lib[name] for name in OVERRIDES.get(peer, ()) if name in lib]
    return peers[peer], shared, overrides


def _stamp(peer: str) -> str:
    pin, shared, overrides = requirements(peer)
    text = "\n".join([sys.version, pin, *shared, "--", *overrides, (ROOT / "pyproject.toml").read_text()])
    return hashlib.sha256(text.encode()).hexdigest()


def _install_command(python: Path, folder: Path, peer: str) -> list[str]:
    pin, shared, overrides = requirements(peer)
    (folder / "constraints.txt").write_text("\n".join(shared) + "\n")
    (folder / "overrides.txt").write_text("\n".join(overrides) + "\n")
    uv = Path(sys.executable).with_name("uv")
    if uv.exists():  # the project's own installer (Makefile): much faster than pip
        command = [str(uv), "pip", "install", "--python", str(python), "--override", str(folder / "overrides.txt")]
    elif overrides:
        raise PeerUnavailableError(f"{peer} needs uv (overrides: {', '.join(overrides)}); .venv/bin/uv is missing")
    else:
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    return [*command, "-c", str(folder / "constraints.txt"), pin, "-e", str(ROOT)]


def ensure(peer: str) -> Path:
    """The Python of the peer's virtualenv, made or remade first when its pins changed."""
    folder = HOME / peer
    python = folder / "bin" / "python"
    stamp = folder / "pins.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp(peer):
        return python
    print(f"  making the virtualenv of {peer} in {folder.relative_to(ROOT)} (logged to install.log there)", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log = folder / "install.log"
    with log.open("w") as out:
        for command in ([sys.executable, "-m", "venv", str(folder)], _install_command(python, folder, peer)):
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                lines = [line for line in log.read_text().splitlines() if line.strip()]
                raise PeerUnavailableError(f"installing {peer} failed: {lines[-1].strip()} (see {log})")
    stamp.write_text(_stamp(peer))
    return python


def installed_version(python: Path, package: str) -> str:
    """``package``'s version in the virtualenv of ``python`` ('?' when it cannot tell)."""
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        try:
            print(name, ensure(name))
        except PeerUnavailableError as exc:
            print(f"{name}: skipped: {exc}")
