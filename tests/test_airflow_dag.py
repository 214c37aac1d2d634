"""The Airflow DAG under a real Airflow 3 (its own virtualenv, `make .venv-airflow`), end to end.

- The DAG folder imports with zero errors, its top level does no I/O, and the task graph is as designed.
- `airflow dags test` runs the whole pipeline twice against the local PostgreSQL (RAW and CLEAN) and a
  local MLflow store, in the project's interpreter as the image does: 2 batches of the real file, then
  one more batch: the ledger, the registry and the report say exactly that.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from readmission.names import DEFAULT_MAX_FIT_ROWS
from testsupport import _unavailable

REPO = Path(__file__).resolve().parents[1]

DAG_ID = "1-diabetes-training-pipeline"
DAGS = REPO / "airflow" / "dags"
PROBE = REPO / "airflow" / "tests" / "inspect_dags.py"
NETWORK_TASKS = {"fetch_data", "load_raw", "build_clean", "train_candidate", "select_and_promote"}
GRAPH = {  # task -> its upstream tasks
    "fetch_data": set(),
    "load_raw": {"fetch_data"},
    "build_clean": {"load_raw"},
    "candidate_families": set(),
    "train_candidate": {"build_clean", "candidate_families"},
    "select_and_promote": {"train_candidate", "candidate_families"},
    "report": {"load_raw", "build_clean", "select_and_promote"},
}


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The interpreter of the Airflow virtualenv (AIRFLOW_VENV, default .venv-airflow)."""
    venv = Path(os.environ.get("AIRFLOW_VENV") or REPO / ".venv-airflow")
    python = venv / "bin" / "python"
    if not (venv / "bin" / "airflow").is_file():
        _unavailable(f"no Airflow virtualenv at {venv}: run `make .venv-airflow/.installed`")
    return python


def _probe(airflow_python: Path, dags: Path, tmp_path: Path) -> dict[str, Any]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [str(airflow_python), str(PROBE), str(dags)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_dag_folder_loads_without_errors_and_the_graph_is_as_designed(airflow_python: Path, tmp_path: Path) -> None:
    found = _probe(airflow_python, DAGS, tmp_path)
    assert found["import_errors"] == {}
    assert found["top_level_io"] == []
    assert list(found["dags"]) == [DAG_ID]
    dag = found["dags"][DAG_ID]
    assert {task: set(info["upstream"]) for task, info in dag["tasks"].items()} == GRAPH
    assert [t for t, info in dag["tasks"].items() if info["mapped"]] == ["train_candidate"]
    for task, info in dag["tasks"].items():
        if task in NETWORK_TASKS:
            assert info["retries"] >= 2 and info["exponential_backoff"], task
        if task != "candidate_families":
            assert info["operator"] == "@task.external_python", task  # runs the project's interpreter
    assert dag["schedule"] == "NullTimetable"  # triggered from the UI
    assert dag["native_templates"] is True
    assert {"diabetes-readmission", "training"} <= set(dag["tags"])
    assert "### 1-diabetes-training-pipeline" in dag["doc_md"]
    params = dag["params"]
    assert set(params) == {
        "max_batches",
        "data_path",
        "families",
        "train_time_budget_seconds",
        "max_trials",
        "max_fit_rows",
        "min_improvement",
    }
    assert params["max_batches"]["default"] is None and params["data_path"]["default"] is None
    assert params["max_trials"]["default"] is None
    assert params["max_fit_rows"]["default"] == DEFAULT_MAX_FIT_ROWS  # the CLI's TRAIN_MAX_FIT_ROWS
    assert params["families"]["default"] == ["logistic_regression", "hist_gradient_boosting", "random_forest"]
    assert all(p["description"] for p in params.values())


def test_the_probe_catches_top_level_io(airflow_python: Path, tmp_path: Path) -> None:
    """The no-I/O check above is only worth something if it sees I/O: a DAG file that reads a file does."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "reads_a_file.py").write_text(
        "from pathlib import Path\nSETTING = Path('/etc/hostname').read_text()\n", encoding="utf-8"
    )
    found = _probe(airflow_python, dags, tmp_path)
    assert any("/etc/hostname" in event for event in found["top_level_io"]), found["top_level_io"]


def _ledger(raw_url: str) -> list[int]:
    engine = create_engine(raw_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT batch_number FROM raw_batches ORDER BY batch_number"))]
    finally:
        engine.dispose()


def _dags_test(airflow: Path, env: dict[str, str], conf: dict[str, Any], log: Path) -> str:
    done = subprocess.run(
        [str(airflow), "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
        capture_output=True, text=True, env=env, timeout=1200, cwd=env["AIRFLOW_HOME"],
    )  # fmt: skip
    output = done.stdout + done.stderr
    log.write_text(output, encoding="utf-8")
    assert done.returncode == 0 and re.search(r"DagRun Finished: .*state=success", output), (
        f"airflow dags test failed (full log: {log}):\n{output[-4000:]}"
    )
    report = re.search(r"Returned value was: (RAW: .*?champion is v\d+\.)", output)
    assert report, f"no run summary in the log {log}"
    return report.group(1)


def test_dags_test_runs_the_pipeline_and_a_second_run_adds_one_batch(
    airflow_python: Path, postgres: Any, real_data_path: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from readmission.registry import CHAMPION, MODEL_NAME

    home = tmp_path / "airflow-home"
    home.mkdir()
    raw_url, clean_url = postgres.create("af_raw"), postgres.create("af_clean")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def airflow_uri(url: str) -> str:  # as an Airflow connection URI (conn type postgres)
        return make_url(url).set(drivername="postgres").render_as_string(hide_password=False)

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_READMISSION_RAW": airflow_uri(raw_url),
        "AIRFLOW_CONN_READMISSION_CLEAN": airflow_uri(clean_url),
        "AIRFLOW_VAR_READMISSION_MLFLOW_TRACKING_URI": tracking_uri,
        "AIRFLOW_VAR_READMISSION_DATA_DIR": str(tmp_path / "data"),
        "AIRFLOW_VAR_READMISSION_PYTHON": str(REPO / ".venv" / "bin" / "python"),
    }
    airflow = airflow_python.with_name("airflow")
    migrate = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=env, timeout=900)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    families = ["logistic_regression", "hist_gradient_boosting"]  # two mapped tasks; the forest adds only minutes
    conf = {"data_path": str(real_data_path), "train_time_budget_seconds": 60, "max_trials": 1, "families": families}

    first = _dags_test(airflow, env, {**conf, "max_batches": 2}, tmp_path / "run-1.log")
    assert _ledger(raw_url) == [0, 1]
    assert first.startswith("RAW: 30,000 rows loaded now in batch(es) [0, 1] (2 of 7 batches in the ledger")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert "v1" in first and "promoted to champion: no champion yet" in first

    second = _dags_test(airflow, env, {**conf, "max_batches": 1}, tmp_path / "run-2.log")
    assert _ledger(raw_url) == [0, 1, 2]
    assert second.startswith("RAW: 15,000 rows loaded now in batch(es) [2] (3 of 7 batches in the ledger, 45,000 rows)")
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    keys = {v.tags.get("training_key") for v in versions}
    assert len(keys) == 2 and all(k and k.startswith("manual__") for k in keys)  # one version per DAG run
    assert "Model: diabetes-readmission v2" in second
