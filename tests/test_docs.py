"""The README's instructions, checked where they can be run or compared with the files they describe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from livesupport import json_stand_in

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_the_airflow_vm_range_is_set_before_the_first_apply() -> None:
    """Was: mentioned only after `kubectl apply -k .`, though PostgreSQL then refuses the VM."""
    deployment = _section("Deployment")
    assert deployment.index("postgres/networkpolicy.yaml") < deployment.index("kubectl apply -k .")
    policy = yaml.safe_load((REPO / "postgres" / "networkpolicy.yaml").read_text())
    cidrs = [p["ipBlock"]["cidr"] for rule in policy["spec"]["ingress"] for p in rule["from"] if "ipBlock" in p]
    assert cidrs and all(f"`{cidr}`" in deployment for cidr in cidrs)


def test_the_readiness_check_prints_the_reason_of_a_503() -> None:
    """Was: `urlopen(...).read()` raised HTTPError on 503 and printed a traceback instead of the reason."""
    command = re.search(r'exec deploy/inference-api -- python -c "([^"]+)"', _section("Deployment"))
    assert command is not None  # in the API pod: the Service has no endpoints while no pod is ready
    not_ready = {"status": "not_ready", "reason": "the registry has no `champion` version"}
    with json_stand_in(lambda _: (503, not_ready)) as url:
        code = command.group(1).replace("http://127.0.0.1:8000", url)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("503 ") and "no `champion` version" in done.stdout


def test_the_quickstart_shows_a_generic_data_path_and_where_to_download_it() -> None:
    quickstart = _section("Quickstart")
    assert "../shared" not in quickstart  # this repository's test layout, not the user's
    assert "DATA_PATH=/path/to/" in quickstart and "https://archive.ics.uci.edu/dataset/296" in quickstart
