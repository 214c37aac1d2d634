"""Run by the Airflow virtualenv's interpreter (tests/test_airflow_dag.py): load the DAG folder as Airflow
does and print what the tests check, as JSON on the last line of stdout.

Importing the DAG file runs under an audit hook that records any network, subprocess or file access the
module makes at parse time (its top level must do no I/O: Airflow parses it every few seconds).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

DAGS = Path(sys.argv[1]).resolve()

# Load Airflow and everything a DAG file normally imports before watching.
import pendulum  # noqa: E402,F401
from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import Param, dag, task  # noqa: E402,F401

events: list[str] = []
WATCHED = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "sqlite3.connect", "urllib.", "http.")


def _audit(event: str, args: tuple) -> None:
    if not watching:
        return
    if event.startswith(WATCHED):
        events.append(f"{event} {args!r}"[:200])
    elif event == "open":
        path, mode = str(args[0]), str(args[1] or "r")
        code = path.endswith((".py", ".pyc", ".so")) or "__pycache__" in path
        if any(flag in mode for flag in "wax+") or not code:
            events.append(f"open {path} {mode}"[:200])


watching = False
sys.addaudithook(_audit)
results: dict[str, object] = {}
for path in sorted(DAGS.glob("*.py")):
    spec = importlib.util.spec_from_file_location(f"dag_probe_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    watching = True
    try:
        spec.loader.exec_module(module)
    finally:
        watching = False
results["top_level_io"] = events

bag = DagBag(dag_folder=str(DAGS))
results["import_errors"] = {str(k): str(v)[:500] for k, v in bag.import_errors.items()}
results["dags"] = {}
for dag_id, dag_obj in bag.dags.items():
    tasks = {}
    for t in dag_obj.tasks:
        tasks[t.task_id] = {
            "upstream": sorted(t.upstream_task_ids),
            "downstream": sorted(t.downstream_task_ids),
            "mapped": bool(getattr(t, "is_mapped", False)),
            "operator": getattr(t, "operator_name", type(t).__name__),
            "retries": t.retries,
            "exponential_backoff": bool(getattr(t, "retry_exponential_backoff", False)),
        }
    params = dag_obj.params
    results["dags"][dag_id] = {
        "tasks": tasks,
        "tags": sorted(dag_obj.tags),
        "schedule": type(dag_obj.timetable).__name__,
        "doc_md": dag_obj.doc_md or "",
        "native_templates": dag_obj.render_template_as_native_obj,
        "params": {
            k: {"default": params.get_param(k).value, "description": params.get_param(k).description or ""}
            for k in params
        },
    }
print(json.dumps(results, default=str))
