"""The closed loop end to end, with real components: a champion trained on the real UCI data (its reference
profile logged), the real API, `readmission replay` of the real test split (encounter ids, then true outcomes),
the real monitor, and a real Prometheus scraping the API with the project's rule files."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from livesupport import free_port, serve, start_api
from rich.console import Console
from sklearn.metrics import roc_auc_score

from readmission import schema
from readmission.clean import SplitSpec, build_clean, read_clean
from readmission.cli.replay_run import ReplayOptions, run_replay
from readmission.db import create_db_engine
from readmission.monitoring import MonitorReport, Thresholds, registry_reference, run_monitor
from readmission.prediction_table import prediction_outcomes
from readmission.raw import SourceFile, load_raw_batches
from readmission.steps import train_job
from readmission.training import TrainConfig, prepare_tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = os.urandom(16).hex()  # the API's RELOAD_TOKEN for this test
SHIFT = ["admission_type_id=1", "age=[70-80)"]  # only emergency admissions of one age band
WINDOW = pd.Timedelta(days=1).to_pytimedelta()


@pytest.fixture(scope="module")
def champion(real_data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking URI, CLEAN URL): version 1, a logistic regression trained on the real CLEAN train split."""
    folder = tmp_path_factory.mktemp("loop")
    raw, clean_url = create_db_engine(f"sqlite:///{folder / 'raw.db'}"), f"sqlite:///{folder / 'clean.db'}"
    load_raw_batches(raw, SourceFile.read(real_data_path))
    build_clean(raw, create_db_engine(clean_url), SplitSpec(seed=42))
    uri, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    prepare_tracking(uri, artifacts)
    config = TrainConfig(families=("logistic_regression",), time_budget_seconds=60, max_trials=1, importance_rows=200)
    job = train_job(clean_url, uri, config, artifact_location=artifacts, log=lambda _line: None)
    assert job["promotion"]["promoted"]
    return uri, clean_url


def _monitor(log_url: str, uri: str) -> MonitorReport:
    from mlflow import MlflowClient

    engine = create_db_engine(log_url)
    try:
        return run_monitor(engine, registry_reference(MlflowClient(uri, uri)), Thresholds(), WINDOW)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def unshifted(champion: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from _loop(champion, tmp_path_factory.mktemp("unshifted"), [], 0.6)


@pytest.fixture(scope="module")
def shifted(champion: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from _loop(champion, tmp_path_factory.mktemp("shifted"), SHIFT, 1.0)


def _loop(champion: tuple[str, str], folder: Path, where: list[str], fraction: float) -> Iterator[dict[str, Any]]:
    uri, clean_url = champion
    log_url = f"sqlite:///{folder / 'predictions.db'}"
    settings = {"PREDICTION_LOG_URL": log_url, "RELOAD_TOKEN": TOKEN, "QUALITY_METRICS_INTERVAL_SECONDS": "1"}
    for api in start_api(folder, uri, **settings):
        summary = run_replay(clean_url, ReplayOptions(api, TOKEN, fraction, 0.0, where, None, 3), Console(quiet=True))
        report = _monitor(log_url, uri)
        yield {"api": api, "log_url": log_url, "summary": summary, "report": report, "clean_url": clean_url}


def _direct_auc(loop: dict[str, Any], uri: str) -> tuple[float, int, int]:
    """ROC-AUC of the champion's own 30-day risk (its pipeline, not the API) on the encounters whose outcome was
    fed, against the CLEAN split's truth; and (fed outcomes, test encounters)."""
    import mlflow

    engine = create_db_engine(loop["log_url"])
    with engine.connect() as conn:
        fed = {
            int(e)
            for e in conn.execute(
                prediction_outcomes.select().with_only_columns(prediction_outcomes.c.encounter_id)
            ).scalars()
        }
    engine.dispose()
    clean_engine = create_db_engine(loop["clean_url"])
    test = read_clean(clean_engine, "test")
    clean_engine.dispose()
    rows = test[test["encounter_id"].astype("int64").isin(fed)]
    mlflow.set_tracking_uri(uri)
    model = mlflow.sklearn.load_model("models:/diabetes-readmission@champion")
    from readmission.evaluation import risk_of
    from readmission.modeling import model_input

    risk = risk_of(model, model_input(rows))[1]
    truth = (rows[schema.TARGET] == schema.POSITIVE_LABEL).to_numpy()
    return float(roc_auc_score(truth, risk)), len(rows), len(test)


def test_live_roc_auc_equals_the_auc_computed_directly_and_coverage_matches(
    unshifted: dict[str, Any], champion: tuple[str, str]
) -> None:
    report: MonitorReport = unshifted["report"]
    print(unshifted["summary"])
    (version,) = report.versions
    direct, fed, predicted = _direct_auc(unshifted, champion[0])
    print(f"live ROC-AUC {version.roc_auc!r}, direct {direct!r}; matured {version.matured}/{version.with_encounter}")
    print(json.dumps(version.calibration, indent=1))
    assert version.roc_auc is not None and abs(version.roc_auc - direct) < 1e-9
    assert version.test_roc_auc is not None and abs(version.test_roc_auc - version.roc_auc) < 0.05  # its registry tag
    assert (version.matured, version.with_encounter, version.predictions) == (fed, predicted, predicted)
    assert version.coverage == pytest.approx(0.6, abs=1 / predicted)
    assert sum(b["outcomes"] for b in version.calibration) == fed
    assert version.drift and max(version.drift.values()) < Thresholds().psi, version.drift
    assert report.action is None


def test_a_shifted_population_drifts_and_names_the_shifted_inputs(shifted: dict[str, Any]) -> None:
    report: MonitorReport = shifted["report"]
    (version,) = report.versions
    top = sorted(version.drift.items(), key=lambda kv: kv[1], reverse=True)[:6]
    print("top drifting inputs:", top, "action:", report.action)
    assert version.drift["age"] > Thresholds().psi and version.drift["admission_type_id"] > Thresholds().psi
    assert report.action is not None and report.action.startswith("not triggered (retraining trigger off")
    assert "age" in report.action


def _prometheus(targets: list[str], folder: Path) -> Iterator[str]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "prometheus" / "rules" / "quality.yml")],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [api.removeprefix("http://")]}]}
            for name, api in zip(("unshifted", "shifted"), targets, strict=True)
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        "prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in serve(command, dict(os.environ), f"{url}/-/ready", folder / "prometheus.log"):
        yield url


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=60) as answer:
        result: list[dict[str, Any]] = json.loads(answer.read())["data"]["result"]
        return result


def _active_drift(prometheus: str) -> list[dict[str, Any]]:
    """ModelInputDrift's active series (pending: its expression holds; firing needs its ``for`` of 15 minutes,
    which the promtool unit tests cover) once Prometheus holds both APIs' monitor results."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = {s["metric"]["job"] for s in _query(prometheus, "inference_monitor_last_run_timestamp_seconds")}
        alerts = _query(prometheus, 'ALERTS{alertname="ModelInputDrift"}')
        if seen == {"unshifted", "shifted"} and {"age", "admission_type_id"} <= {
            a["metric"]["feature"] for a in alerts
        }:
            time.sleep(3)  # one more evaluation with both scraped: the unshifted job had its chance to fire
            return _query(prometheus, 'ALERTS{alertname="ModelInputDrift"}')
        time.sleep(1)
    return _query(prometheus, 'ALERTS{alertname="ModelInputDrift"}')


def test_the_drift_alert_fires_on_the_shifted_replay_only(
    unshifted: dict[str, Any], shifted: dict[str, Any], tmp_path: Path
) -> None:
    """A real Prometheus scrapes both APIs (one job each) with the project's quality rules: ModelInputDrift
    goes active for the shifted job's age and admission type, never for the unshifted job."""
    for prometheus in _prometheus([unshifted["api"], shifted["api"]], tmp_path):
        alerts = _active_drift(prometheus)
        jobs = {a["metric"]["job"] for a in alerts}
        features = sorted({a["metric"]["feature"] for a in alerts})
        print("ModelInputDrift active for", jobs, features, {a["metric"]["alertstate"] for a in alerts})
        assert jobs == {"shifted"} and {"age", "admission_type_id"} <= set(features)
        live = {s["metric"]["job"]: float(s["value"][1]) for s in _query(prometheus, "inference_live_roc_auc")}
        assert live["unshifted"] == pytest.approx(unshifted["report"].versions[0].roc_auc, abs=1e-12)
        psi = _query(prometheus, 'topk(3, inference_feature_drift_psi{job="shifted"})')
        print("top PSI in Prometheus:", [(s["metric"]["feature"], s["value"][1]) for s in psi])
        assert np.isclose(max(float(s["value"][1]) for s in psi), max(shifted["report"].versions[0].drift.values()))
