"""Monitoring, checked with the real tools: promtool on the scrape config and the rules, promtool's unit tests
of every alert, the generated PrometheusRule kept in step with the rule files, the Grafana dashboards' JSON,
and a real Prometheus (Debian's package) scraping the real API with the project's own files and answering
every PromQL expression of every dashboard and rule (the model-quality ones on a monitor result and an outcome
seeded into the API's log database, as the monitor and the outcome feed write them)."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from livesupport import free_port, http_status, serve, start_api, train_champion

from readmission.db import create_db_engine
from readmission.prediction_table import metadata, model_monitoring, prediction_outcomes

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / "prometheus"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
GRAFANA_SCHEMA_VERSION = 42  # Grafana 13 (the image grafana/ pins)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `apt-get install prometheus` (CI installs it)")
    return found


def _rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def _static_config(target: str, rules_dir: Path) -> dict[str, Any]:
    """prometheus.yml with the API's Kubernetes discovery swapped for ``target`` (the Debian build has no
    Kubernetes discovery) and the rule files where they are; nothing else changes."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(rules_dir / "*.yml")]
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            sd = job.pop("kubernetes_sd_configs")
            assert sd[0]["role"] == "pod" and sd[0]["namespaces"]["names"] == ["project-3-mlops"], job["job_name"]
            job["static_configs"] = [{"targets": [target]}] if job["job_name"] == "inference-api" else []
    return config


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(_static_config("127.0.0.1:8000", PROMETHEUS / "rules")))
    done = subprocess.run([_tool("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in done.stdout + done.stderr
    selector = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][1]
    assert selector["job_name"] == "inference-api"
    assert selector["kubernetes_sd_configs"][0]["selectors"] == [
        {"role": "pod", "label": "app.kubernetes.io/name=inference-api"}
    ]


def test_the_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    tested = subprocess.run(
        [promtool, "test", "rules", *map(str, tests)], capture_output=True, text=True, cwd=PROMETHEUS
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a firing case and the healthy case in the unit tests.
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    cases = [
        case
        for path in tests
        for group in yaml.safe_load(path.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    assert {c["alertname"] for c in cases if c.get("exp_alerts")} == alerts
    assert {c["alertname"] for c in cases if not c.get("exp_alerts")} == alerts
    assert len(alerts) >= 8


def test_the_unit_tests_catch_a_broken_alert(tmp_path: Path) -> None:
    """promtool's unit tests fail when an alert's threshold is wrong (they test something)."""
    rules = tmp_path / "rules"
    tests = tmp_path / "tests"
    shutil.copytree(PROMETHEUS / "rules", rules)
    shutil.copytree(PROMETHEUS / "tests", tests)
    path = rules / "inference.yml"
    path.write_text(
        path.read_text().replace(
            "job:inference_request_errors:ratio_rate5m > 0.01", "job:inference_request_errors:ratio_rate5m > 0.5"
        )
    )
    tested = subprocess.run(
        [_tool("promtool"), "test", "rules", "tests/inference.test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert tested.returncode != 0 and "InferenceHighErrorRatio" in tested.stdout + tested.stderr


def test_the_prometheus_rule_of_kube_prometheus_stack_is_generated_from_the_rule_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "observability.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rule = yaml.safe_load((REPO / "observability" / "prometheusrule.yaml").read_text())
    assert (
        rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kube-prom-stack"
    )
    groups = tmp_path / "groups.yml"
    groups.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([_tool("promtool"), "check", "rules", str(groups)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    monitor = yaml.safe_load((REPO / "observability" / "servicemonitor.yaml").read_text())
    api_service = yaml.safe_load((REPO / "inference-api" / "service.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= api_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in api_service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prom-stack"
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "observability")], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    assert {o["metadata"]["namespace"] for o in objects} == {"observability"}
    dashboards = next(o for o in objects if o["kind"] == "ConfigMap")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(dashboards["data"]) == sorted(p.name for p in DASHBOARDS)  # the same files as grafana/


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # rows
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_valid_grafana_json(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["schemaVersion"] == GRAFANA_SCHEMA_VERSION
    assert dashboard["uid"] and dashboard["title"] and dashboard["description"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        where = f"{path.name} panel {panel['id']}"
        assert panel["title"] and panel.get("description"), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
            assert target["expr"].strip(), where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))
    datasource = yaml.safe_load((REPO / "grafana" / "datasource.yaml").read_text())["datasources"][0]
    assert datasource["uid"] == "prometheus"


# --- a real Prometheus scraping the real API -----------------------------------------------------------------


def _seed_healthy_monitoring(log_url: str) -> None:
    """A monitor run of the champion (version 1) made just now and an outcome recorded just now, both healthy (live
    ROC-AUC near test on enough outcomes, no drift): the model-quality metrics exist only once the monitor wrote
    rows, and every model-quality alert must stay silent on them."""
    now = dt.datetime.now(dt.UTC)
    bands = [("low", 250, 0.08, 0.07), ("medium", 100, 0.21, 0.2), ("high", 50, 0.38, 0.36)]
    run = {
        "run_id": "live-test", "run_at": now, "model_name": "diabetes-readmission", "model_version": "1",
        "window_start": now - dt.timedelta(days=30), "window_end": now,
        "predictions": 1200, "with_encounter": 1000, "matured": 400, "roc_auc": 0.66, "brier": 0.09,
        "test_roc_auc": 0.68, "drift": {"age": 0.02, "number_inpatient": 0.04}, "drift_problem": None,
        "calibration": [{"band": b, "outcomes": n, "predicted": p, "observed": o} for b, n, p, o in bands],
        "thresholds": {"auc_drop": 0.05, "min_outcomes": 200, "psi": 0.2, "outcomes_stall_seconds": 172800.0},
        "action": "none: live ROC-AUC within 0.05 of test",
    }  # fmt: skip
    outcome = {"encounter_id": 1, "readmitted": "NO", "observed_at": now, "recorded_at": now, "source": "api"}
    engine = create_db_engine(log_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(model_monitoring.insert(), [run])
        conn.execute(prediction_outcomes.insert(), [outcome])
    engine.dispose()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    champion = train_champion(tmp_path_factory.mktemp("registry"))
    folder = tmp_path_factory.mktemp("api")
    log_url = f"sqlite:///{folder / 'predictions.db'}"
    _seed_healthy_monitoring(log_url)  # before the API starts: its first read of the results finds them
    yield from start_api(folder, champion.tracking_uri, MODEL_POLL_INTERVAL_SECONDS="2", PREDICTION_LOG_URL=log_url)


@pytest.fixture(scope="module")
def prometheus(api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    document = _static_config(api.removeprefix("http://"), PROMETHEUS / "rules")
    # Scrape and evaluate every 2 s instead of the project's 15 s: the test needs samples, not the cadence.
    document["global"] = {**document["global"], "scrape_interval": "2s", "evaluation_interval": "2s"}
    config.write_text(yaml.safe_dump(document))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        _tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    for _ in serve(command, dict(os.environ), f"{url}/-/ready", folder / "prometheus.log"):
        yield url


# Hang guards, not speed limits: on a loaded machine a query or a request can take seconds.
HTTP_TIMEOUT = 60
PATIENCE_SECONDS = 600

# Alerts whose input is how fast this machine is, not how healthy the API is: on a slow or busy machine the
# real p99 of the real requests is above the 250 ms objective and the alert goes pending (issue #16). Their
# verdict is checked on synthetic series instead, where it is deterministic: the promtool unit tests fire it
# on a slow histogram and keep it silent on a fast one (test_the_rules_pass_promtool_and_their_unit_tests
# requires both cases for every alert). On the real Prometheus they must still load, evaluate without error
# and, when active, carry a value above their threshold (see the test).
SPEED_DEPENDENT_ALERTS = {"InferenceHighLatencyP99"}


def _query(prometheus: str, expr: str) -> dict[str, Any]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def _traffic(api: str, rounds: int) -> None:
    """``rounds`` rounds of a single prediction, a batch and an invalid request (a fixed amount of traffic,
    however long the machine takes to answer it)."""
    from readmission import schema

    encounter = json.dumps(next(iter(schema.EXAMPLE_ENCOUNTERS.values()))).encode()
    batch = json.dumps({"encounters": list(schema.EXAMPLE_ENCOUNTERS.values())}).encode()
    headers = {"Content-Type": "application/json"}
    for _ in range(rounds):
        for path, body in (("/predict", encounter), ("/predict/batch", batch), ("/predict", b'{"age": "old"}')):
            with contextlib.suppress(urllib.error.HTTPError):  # the invalid one answers 422
                urllib.request.urlopen(
                    urllib.request.Request(api + path, data=body, headers=headers), timeout=HTTP_TIMEOUT
                ).close()
        time.sleep(0.05)


def _expression_problems(prometheus: str) -> list[str]:
    """Every dashboard expression that fails or has no data, every rule expression that fails, and the API's
    target unless its last scrape succeeded."""
    problems = []
    targets = _query(prometheus, 'up{job="inference-api"}')["data"]["result"]
    if [t["value"][1] for t in targets] != ["1"]:
        problems.append(f"the API's target is not up: {targets}")
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())):
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                answer = _query(prometheus, expr)
                if answer["status"] != "success":
                    problems.append(f"{path.name} '{panel['title']}': {answer.get('error')}")
                elif not answer["data"]["result"]:
                    problems.append(f"{path.name} '{panel['title']}': no data for {expr}")
    for rule in _rules():
        answer = _query(prometheus, rule["expr"])
        if answer["status"] != "success":
            problems.append(f"rule {rule.get('alert') or rule.get('record')}: {answer.get('error')}")
    # InferencePredictionDrift only looks at the mean risk past 100 predictions an hour: until Prometheus saw
    # that many, its silence in the next test would prove nothing.
    if not _query(prometheus, "sum(increase(inference_readmission_risk_count[1h])) > 100")["data"]["result"]:
        problems.append("Prometheus has not seen 100 predictions yet (InferencePredictionDrift's volume gate)")
    return problems


def test_prometheus_answers_every_dashboard_and_rule_expression(api: str, prometheus: str) -> None:
    assert http_status(f"{api}/health/ready") == 200
    # Scrapes every 2 s (see the fixture). Traffic goes on, round after round, until every expression has
    # data: how many rounds that takes depends on the machine, the verdict does not. The deadline is a hang
    # guard; a failed scrape (2 s timeout on a busy machine) is only waited out, one that never succeeds fails.
    deadline = time.monotonic() + PATIENCE_SECONDS
    while True:
        _traffic(api, 20)
        problems = _expression_problems(prometheus)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert problems == []
    # The recording rules computed what the API did: no 5xx, a mean risk between 0 and 1.
    ratio = _query(prometheus, 'job:inference_request_errors:ratio_rate5m{job="inference-api"}')["data"]["result"]
    assert float(ratio[0]["value"][1]) == 0.0
    risk = _query(prometheus, 'job:inference_readmission_risk:mean1h{job="inference-api"}')["data"]["result"]
    assert 0 < float(risk[0]["value"][1]) < 1
    refused = _query(prometheus, 'sum(inference_requests_total{status="422"})')["data"]["result"]
    assert float(refused[0]["value"][1]) > 0


def _rule_states(prometheus: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=HTTP_TIMEOUT) as response:
        return [rule for group in json.loads(response.read())["data"]["groups"] for rule in group["rules"]]


def test_alerts_are_loaded_and_silent_on_the_healthy_api(prometheus: str) -> None:
    rules = _rule_states(prometheus)
    assert {r.get("alert") or r.get("record") for r in _rules()} == {r["name"] for r in rules}
    alerts = {r["name"] for r in rules if r.get("type") == "alerting"}
    assert alerts > SPEED_DEPENDENT_ALERTS  # the exclusion names real alerts, and not all of them
    # Every other alert's input is deterministic on a healthy API (a model loaded and still champion, no 5xx, no
    # failed load, no log error or drop, a mean risk in range, no model call over the test API's 300 s timeout,
    # see livesupport.start_api): each must be inactive. Those driven by counters stay active for
    # their whole window once triggered, so waiting cannot hide them; it only waits out the one input a busy
    # machine can flip for a moment, `up` after a scrape slower than its 2 s timeout (InferenceApiDown).
    # A rule not evaluated yet (Prometheus evaluates a group first one interval after loading it) has health
    # "unknown" and state "inactive": wait for the first evaluation too, or a slow start passes vacuously.
    deadline = time.monotonic() + PATIENCE_SECONDS
    while True:
        active = [r["name"] for r in rules if r["name"] in alerts - SPEED_DEPENDENT_ALERTS and r["state"] != "inactive"]
        unevaluated = [r["name"] for r in rules if r.get("health") == "unknown"]
        if (not active and not unevaluated) or time.monotonic() > deadline:
            break
        time.sleep(1)
        rules = _rule_states(prometheus)
    assert active == []
    assert all(r.get("health") == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"
    ]
    # A speed-dependent alert is not asserted silent (see SPEED_DEPENDENT_ALERTS), but when the machine made it
    # active, it must be for the reason its rule states: a value above the rule's threshold.
    thresholds = {
        r["alert"]: float(r["expr"].rsplit(">", 1)[1]) for r in _rules() if r.get("alert") in SPEED_DEPENDENT_ALERTS
    }
    for rule in rules:
        if rule["name"] in SPEED_DEPENDENT_ALERTS:
            assert all(float(a["value"]) > thresholds[rule["name"]] for a in rule.get("alerts", [])), rule


def test_static_swap_changes_only_discovery() -> None:
    original = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    swapped = _static_config("127.0.0.1:1", Path("/rules"))
    for before, after in zip(original["scrape_configs"], swapped["scrape_configs"], strict=True):
        if "kubernetes_sd_configs" in before:  # discovery swapped for static targets, the rest (relabelling) kept
            rest_before = {k: v for k, v in before.items() if k != "kubernetes_sd_configs"}
            assert rest_before == {k: v for k, v in after.items() if k != "static_configs"}
        else:
            assert before == after
    assert copy.deepcopy(original["global"]) == swapped["global"]
