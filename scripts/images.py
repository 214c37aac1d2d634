"""Build the service images under the names and tags their kustomizations deploy (`make images`).

    python scripts/images.py [SERVICE ...]      default: mlflow inference-api streamlit locust

Each image is built from the repository root with its service's Dockerfile and tagged with the reference the
service's kustomization.yaml gives it (``images: newName:newTag``, e.g.
``localhost:32000/diabetes-readmission/inference-api:0.3.0``), so `kubectl apply -k .` deploys exactly what was
built once it is pushed to that registry. The builder is Docker where a Docker engine answers, else buildah
(daemonless: ``buildah bud --layers --isolation chroot --format docker``; podman then runs the images). Layers
are cached between builds and between images (the same base and the same pinned-requirements step).

The airflow image is not built here: its base, apache/airflow, comes from Docker Hub; build it on the Airflow
VM (airflow/README.md). Prints one line per image: seconds to build and size in MB.
"""

from __future__ import annotations

import argparse
import json
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
            return Image(service, root / service / "Dockerfile", f"{entry.get('newName', wanted)}:{entry['newTag']}")
    raise ValueError(f"{service}/kustomization.yaml has no `images` entry named {wanted}: add one with newTag")


def builder(docker_allowed: bool = True) -> list[str]:
    """The build command before its arguments: `docker build` where an engine answers (and
    ``docker_allowed``), else buildah, whose images podman runs. Raises RuntimeError naming what to install
    when neither is usable."""
    docker = shutil.which("docker")
    if docker_allowed and docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return [docker, "build"]
    buildah = shutil.which("buildah")
    if buildah:
        return [buildah, "bud", "--layers", "--isolation", "chroot", "--format", "docker"]
    raise RuntimeError("no Docker engine answers and buildah is missing: install Docker, or buildah and podman")


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


def build(image: Image, command: list[str], root: Path = ROOT) -> float:
    """Build ``image`` from ``root`` with ``command`` (see ``builder``); seconds taken. Raises
    CalledProcessError with the builder's output when the build fails."""
    started = time.monotonic()
    subprocess.run([*command, "-f", str(image.dockerfile), "-t", image.reference, str(root)], check=True)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"default: {' '.join(SERVICES)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.services) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    command = builder()
    program = engine(command)
    images = [image_of(service) for service in args.services or SERVICES]
    results = [(image, build(image, command)) for image in images]
    for image, seconds in results:
        size = size_bytes(image.reference, program) / 1e6
        print(f"{image.service:<14} {image.reference:<58} built in {seconds:6.1f} s  {size:7.0f} MB")
    if stand_in_base(program):
        print(f"note: built on scripts/stand-in-base.sh's test-only stand-in for {BASE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
