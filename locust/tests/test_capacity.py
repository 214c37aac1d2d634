"""The capacity finder, headless, for a few short steps against the real API (a champion the project's job
trained; payloads drawn from that job's CLEAN test split): reports, verdict, and the invalid share got 422."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from livesupport import Champion, free_port, start_api, train_champion

LOCUST = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return train_champion(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def api(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_api(tmp_path_factory.mktemp("api"), champion.tracking_uri)


def _capacity(api: str, champion: Champion, out: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LOADTEST_CLEAN_URL": champion.clean_url,
        "LOADTEST_PAYLOAD_ROWS": "300",
        "CAPACITY_STEP_USERS": "3",
        "CAPACITY_STEP_SECONDS": "10",
        "CAPACITY_MAX_USERS": "6",
        "CAPACITY_REPORT": str(out / "capacity.json"),
        "LOADTEST_WAIT_MIN": "0.05",
        "LOADTEST_WAIT_MAX": "0.15",
        **settings,
    }
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        f"{LOCUST / 'locustfile.py'},{LOCUST / 'capacity.py'},{LOCUST / 'tests' / 'ordered_user.py'}",
        "OrderedApiUser",  # ApiUser's tasks in a fixed order: the mix of a short run cannot depend on speed
        "--headless",
        "--stop-timeout",  # as `make loadtest` and the CronJob: the last requests in flight finish and are counted
        "60",
        "--host",
        api,
        "--csv",
        str(out / "capacity"),
        "--html",
        str(out / "capacity.html"),
        "--loglevel",
        "WARNING",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=out)


def _metric(api: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    )


def test_the_capacity_finder_steps_up_reports_and_gives_a_verdict(api: str, champion: Champion, tmp_path: Path) -> None:
    refused_before = _metric(api, "inference_requests_total", endpoint="/predict", status="422")
    # The objective is one no working API breaks on a busy machine (a busy 2-core machine measured p95 3.1 s):
    # 60 s, FastHttpUser's own network timeout. Breaking it is the next test's case, with an objective nothing
    # meets.
    result = _capacity(api, champion, tmp_path, CAPACITY_P95_MS="60000")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    line = re.search(r"capacity: holds 6 users at [\d.]+ req/s, p95 \d+ ms, errors 0\.00% .*", output)
    assert line, output[-4000:]
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert [s["users"] for s in report["steps"]] == [3, 6] and all(s["held"] for s in report["steps"])
    assert report["held_users"] == 6 and report["verdict"] == line.group(0).strip()
    assert (tmp_path / "capacity.html").stat().st_size > 1_000
    with (tmp_path / "capacity_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    invalid = rows["/predict [invalid: expect 422]"]
    assert int(invalid["Request Count"]) > 0 and int(invalid["Failure Count"]) == 0
    assert int(rows["/predict"]["Request Count"]) > int(rows["/predict/batch"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    # The API itself answered those invalid requests with 422 (the locustfile counted 422 as success): every one
    # Locust recorded, and at most one more per user, a request in flight when the run ended that Locust did not
    # record (CI saw 115 vs 114 and, with --stop-timeout 60, 123 vs 122; cause not yet found, see CHANGELOG).
    refused = _metric(api, "inference_requests_total", endpoint="/predict", status="422") - refused_before
    assert int(invalid["Request Count"]) <= refused <= int(invalid["Request Count"]) + 6


def test_the_load_mix_is_mostly_single_predictions_with_some_batches_and_invalid_requests() -> None:
    """The weights of the random mix (the runs above send the same tasks in a fixed order, see ordered_user.py),
    read in a process of its own: importing locust patches the standard library with gevent."""
    probe = (
        "import collections, json, sys; sys.path.insert(0, sys.argv[1]); import locustfile;"
        "print(json.dumps(collections.Counter(t.__name__ for t in locustfile.ApiUser.tasks)))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(LOCUST)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(weights) == {"predict", "predict_batch", "invalid"}
    assert weights["predict"] > weights["predict_batch"] > weights["invalid"] > 0


def test_an_objective_broken_below_the_minimum_fails_the_run(api: str, champion: Champion, tmp_path: Path) -> None:
    result = _capacity(api, champion, tmp_path, CAPACITY_P95_MS="0.001", CAPACITY_MIN_USERS="3")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "capacity: holds no step (objective p95 <= 0 ms" in output
    assert "broke at 3 users (p95" in output
    assert "below the required minimum of 3 users (CAPACITY_MIN_USERS)" in output


def test_the_init_containers_wait_until_the_api_is_ready(api: str) -> None:
    wait = [sys.executable, str(LOCUST / "wait_for_api.py")]
    ready = subprocess.run([*wait, api, "30"], capture_output=True, text=True, timeout=60)
    assert ready.returncode == 0 and f"{api} is ready" in ready.stdout
    closed = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run([*wait, closed, "1"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1
    assert f"{closed} not ready yet: unreachable" in down.stdout
    assert f"{closed} was not ready within 1 s" in down.stderr


def test_every_load_test_setting_is_documented_in_the_readme_with_its_default() -> None:
    """Was: the README's example could not be reproduced (CAPACITY_MAX_USERS, default 400, not mentioned)."""
    root = Path(__file__).resolve().parents[2]
    code = "".join(p.read_text() for p in (root / "locust").glob("*.py"))
    read = dict(re.findall(r'_(?:number|setting)\("((?:CAPACITY|LOADTEST)_[A-Z_0-9]+)", "?([^",)]+)', code))
    assert len(read) >= 12, read
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^\| `([A-Z_0-9]+)`(?:, `[A-Z_0-9]+`)? \| ([^|]+) \|", (root / "README.md").read_text(), re.M
        )
    }
    for name, default in read.items():
        documented = table.get(name) or next((v for k, v in table.items() if k.startswith(name[:-4])), None)
        assert documented is not None, f"{name} is not in the README's load-test table"
        if name.endswith(("_MIN", "_MAX")) or name == "CAPACITY_SPAWN_RATE":
            continue  # paired cells and derived defaults are checked by eye
        assert default.strip() in documented, (name, default, documented)
