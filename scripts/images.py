"""Build the service images under the names and tags their kustomizations deploy (`make images`).

    python scripts/images.py [SERVICE ...]      default: mlflow inference-api streamlit locust

Each image is built from the repository root with its service's Dockerfile and tagged with the reference the
service's kustomization.yaml gives it (``images: newName:newTag``, e.g.
``localhost:32000/diabetes-readmission/inference-api:0.3.0``), so `kubectl apply -k .` deploys exactly what was
built once it is pushed to that registry. The builder is Docker where a Docker engine answers, else buildah
(daemonless: ``buildah bud --layers --isolation chroot --format docker``; podman then runs the images). Layers
are cached between builds (a step reruns only when its inputs change: the requirements step only when the
pins do) and the images share the base's layers.

The base image python:3.11-slim-bookworm must be in the engine's storage or pullable. Images are not built on
scripts/stand-in-base.sh's test-only stand-in (made where Docker Hub cannot be reached) unless
ALLOW_STAND_IN=1, as the tests set: they are for testing, never for a registry.

The airflow image is not built here: its base, apache/airflow, comes from Docker Hub; it is built on the Airflow
VM by its compose file (README, "Airflow"). Prints one line per image: seconds to build and size in MB.
Exit status 1 with one line on stderr when the builder, the base image or a build fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("mlflow", "inference-api", "streamlit", "locust")
BASE = "python:3.11-slim-bookworm"
# scripts/stand-in-base.sh labels its test-only stand-in for the official base image with this.
STAND_IN_LABEL = "org.readmission.stand-in"


@dataclass(frozen=True)
class Image:
    """A service's image: its Dockerfile and the reference (name:tag) its kustomization deploys."""

    service: str
    dockerfile: Path
    reference: str


def image_of(service: str, root: Path = ROOT) -> Image:
    """The image of ``service`` (a folder with a Dockerfile and a kustomization.yaml whose ``images`` entry
    names ``diabetes-readmission/<service>``). Raises ValueError when the kustomization has no such entry."""
    kustomization = yaml.safe_load((root / service / "kustomization.yaml").read_text())
    wanted = f"diabetes-readmission/{service}"
    for entry in kustomization.get("images", []):
        if entry.get("name") == wanted:
            if not entry.get("newTag"):
                raise ValueError(f"{service}/kustomization.yaml: the `images` entry {wanted} has no newTag: add one")
            return Image(service, root / service / "Dockerfile", f"{entry.get('newName', wanted)}:{entry['newTag']}")
    raise ValueError(f"{service}/kustomization.yaml has no `images` entry named {wanted}: add one with newTag")


def builder(docker_allowed: bool = True) -> list[str]:
    """The build command before its arguments: `docker build` where an engine answers (and
    ``docker_allowed``), else buildah, whose images podman runs. Raises RuntimeError naming what to install
    when neither is usable."""
    docker = shutil.which("docker")
    if docker_allowed and docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "build"]
    buildah, podman = shutil.which("buildah"), shutil.which("podman")
    if buildah and podman:
        return [buildah, "bud", "--layers", "--isolation", "chroot", "--format", "docker"]
    why = ""
    if docker_allowed and docker:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
        why = f" (`docker info`: {info.stderr.strip().splitlines()[-1] if info.stderr.strip() else 'failed'})"
    raise RuntimeError(
        f"no Docker engine answers{why} and buildah with podman is missing: start Docker (or join the docker "
        "group), or install buildah and podman (Debian: apt-get install buildah podman)"
    )


def engine(command: list[str]) -> str:
    """The program that lists and runs what ``command`` builds: docker, or podman beside buildah."""
    return command[0] if Path(command[0]).name == "docker" else (shutil.which("podman") or "podman")


def size_bytes(reference: str, program: str) -> int:
    """The image's size as the engine reports it (uncompressed, base layers included)."""
    out = subprocess.run(
        [program, "image", "inspect", "--format", "{{.Size}}", reference], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def stand_in_base(program: str) -> bool:
    """Whether the local ``python:3.11-slim-bookworm`` is scripts/stand-in-base.sh's stand-in."""
    out = subprocess.run([program, "image", "inspect", BASE], capture_output=True, text=True)
    if out.returncode != 0:
        return False
    labels = (json.loads(out.stdout)[0].get("Config") or {}).get("Labels") or {}
    return STAND_IN_LABEL in labels


def check_base(program: str, allow_stand_in: bool) -> None:
    """Raise RuntimeError, saying what to do, when the base image is neither present nor pullable, or is the
    test-only stand-in and ``allow_stand_in`` is false."""
    present = subprocess.run([program, "image", "inspect", BASE], capture_output=True).returncode == 0
    if not present and subprocess.run([program, "pull", BASE], capture_output=True).returncode != 0:
        raise RuntimeError(
            f"the base image {BASE} is not here and cannot be pulled (Docker Hub unreachable?): pull it from a mirror "
            f"and tag it {BASE}; for tests only, scripts/stand-in-base.sh makes a stand-in"
        )
    if not allow_stand_in and stand_in_base(program):
        raise RuntimeError(
            f"the local {BASE} is scripts/stand-in-base.sh's test-only stand-in: images built on it are for tests, "
            f"not for a registry. Remove it (`{Path(program).name} rmi {BASE}`) and pull the official image, or set "
            "ALLOW_STAND_IN=1 to build test images"
        )


def build(image: Image, command: list[str], root: Path = ROOT) -> float:
    """Build ``image`` from ``root`` with ``command`` (see ``builder``); seconds taken. Raises
    CalledProcessError with the builder's output when the build fails."""
    started = time.monotonic()
    subprocess.run([*command, "-f", str(image.dockerfile), "-t", image.reference, str(root)], check=True)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"default: {' '.join(SERVICES)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.services) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    try:
        command = builder()
        program = engine(command)
        check_base(program, allow_stand_in=os.environ.get("ALLOW_STAND_IN") == "1")
        images = [image_of(service) for service in args.services or SERVICES]
        results = [(image, build(image, command)) for image in images]
    except (RuntimeError, ValueError) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(
            f"images: the build failed (exit {exc.returncode}): {' '.join(exc.cmd)}; its output is above",
            file=sys.stderr,
        )
        return 1
    for image, seconds in results:
        size = size_bytes(image.reference, program) / 1e6
        print(f"{image.service:<14} {image.reference:<58} built in {seconds:6.1f} s  {size:7.0f} MB")
    if stand_in_base(program):
        print(f"note: built on scripts/stand-in-base.sh's test-only stand-in for {BASE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
