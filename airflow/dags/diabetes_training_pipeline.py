"""
### 1-diabetes-training-pipeline

Trains the diabetes-readmission model from the UCI data and moves the registry alias `champion` only when
the new model is better.

1. **fetch_data**: download the UCI file (cached, checksummed) or check `data_path`.
2. **load_raw**: load pending 15,000-row batches into the RAW database (`max_batches` per run; the
   ledger skips batches already loaded, so re-runs never duplicate rows).
3. **build_clean**: rebuild the CLEAN database with the patient-grouped train/validation/test split.
4. **train_candidate**: one task per model family (dynamic task mapping), each tracked in MLflow.
5. **select_and_promote**: register the best candidate (by validation ROC-AUC of `<30`) and move
   `champion` only if it beats the current champion on the same test split.
6. **report**: a summary of the run (also this run's XCom `return_value`).

Every task runs the project's library (`readmission.steps`, the same functions as the `readmission`
CLI) in its own interpreter, Variable `readmission_python` (default `/opt/readmission/bin/python`), so
Airflow's pinned packages and the training stack never conflict. Settings: connections
`readmission_raw` and `readmission_clean` (PostgreSQL), Variables `readmission_mlflow_tracking_uri` and
`readmission_data_dir`, and MLflow's user `trainer` in the standard variables `MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD` of the workers' environment; see `airflow/.env.example`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

FAMILIES = ["logistic_regression", "hist_gradient_boosting", "random_forest"]

# Every setting is resolved when a task runs (templates), never when the file is parsed.
PYTHON = "{{ var.value.get('readmission_python', '/opt/readmission/bin/python') }}"
RAW_URL = "{{ conn.readmission_raw.get_uri() }}"
CLEAN_URL = "{{ conn.readmission_clean.get_uri() }}"
TRACKING_URI = "{{ var.value.readmission_mlflow_tracking_uri }}"
DATA_DIR = "{{ var.value.get('readmission_data_dir', '/opt/airflow/data') }}"
TRAINING_KEY = "{{ run_id }}"

PROJECT = {"python": PYTHON, "expect_airflow": False}
# Tasks that reach a database, MLflow or the internet: retried with exponential backoff.
NETWORK = {"retries": 3, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True}


@dag(
    dag_id="1-diabetes-training-pipeline",
    description="UCI diabetes data -> RAW -> CLEAN -> candidate models -> champion (only if better)",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["diabetes-readmission", "training", "mlflow"],
    doc_md=__doc__,
    render_template_as_native_obj=True,  # "{{ params.max_batches }}" arrives as None or an int, not a string
    default_args={"owner": "mlops", "retries": 0},
    params={
        "max_batches": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Batches to load",
            description="Pending 15,000-row batches to load into RAW in this run; empty: all pending batches.",
        ),
        "data_path": Param(
            None,
            type=["null", "string"],
            title="Local data file",
            description="Path of diabetic_data.csv (or the UCI zip) on the Airflow workers; empty: download from UCI.",
        ),
        "families": Param(
            FAMILIES,
            type="array",
            items={"type": "string", "enum": FAMILIES},
            minItems=1,
            title="Model families",
            description="Candidate families, trained in parallel (one task each).",
        ),
        "train_time_budget_seconds": Param(
            300,
            type="number",
            exclusiveMinimum=0,
            title="Training time budget (s)",
            description="Seconds for the whole training: trials, shared by the families (one trial each always "
            "runs), then selection, importance, plots and registration (a fifth, 60 s at most).",
        ),
        "max_trials": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Trials per family at most",
            description="Caps each family's hyper-parameter trials; empty: as many as the time budget allows. Set it "
            "for a run that does not depend on the machine's speed.",
        ),
        "max_fit_rows": Param(
            100_000,
            type="integer",
            minimum=1_000,
            title="Train rows fitted at most",
            description="A larger train split is fitted, with validation, on a patient sample of about this many rows "
            "(tagged data.fit_sample; the test split is never cut). TRAIN_MAX_FIT_ROWS of the CLI.",
        ),
        "min_improvement": Param(
            0.0,
            type="number",
            minimum=0,
            title="Minimum improvement",
            description="How much the test ROC-AUC of <30 must beat the current champion's to move `champion`.",
        ),
    },
)
def diabetes_training_pipeline() -> None:
    @task.external_python(**PROJECT, **NETWORK)
    def fetch_data(data_dir: str, data_path: str | None) -> dict:
        from readmission import steps

        return steps.fetch_data(data_dir, data_path)

    @task.external_python(**PROJECT, **NETWORK)
    def load_raw(raw_url: str, dataset: dict, max_batches: int | None) -> dict:
        from readmission import steps

        return steps.load_raw(raw_url, dataset["path"], max_batches=max_batches)

    @task.external_python(**PROJECT, **NETWORK)
    def build_clean(raw_url: str, clean_url: str, loaded: dict) -> dict:
        from readmission import steps

        return steps.build_clean(raw_url, clean_url)

    @task
    def candidate_families(params: dict | None = None) -> list:
        return list(params["families"]) if params else list(FAMILIES)

    @task.external_python(**PROJECT, **NETWORK)
    def train_candidate(
        family: str,
        clean_url: str,
        tracking_uri: str,
        training_key: str,
        budget: float,
        max_trials: int | None,
        max_fit_rows: int,
        families: list,
        clean: dict,
    ) -> dict:
        from readmission import steps

        share = steps.trial_share(float(budget), len(families))
        return steps.train_family(
            clean_url, tracking_uri, family, training_key, share, max_trials=max_trials, max_fit_rows=int(max_fit_rows)
        )

    @task.external_python(**PROJECT, **NETWORK)
    def select_and_promote(
        families: list, clean_url: str, tracking_uri: str, training_key: str, min_improvement: float, max_fit_rows: int
    ) -> dict:
        from readmission import steps

        return steps.select_and_promote(
            clean_url,
            tracking_uri,
            training_key,
            list(families),
            min_improvement=float(min_improvement),
            max_fit_rows=int(max_fit_rows),
        )

    @task.external_python(**PROJECT)
    def report(loaded: dict, clean: dict, promotion: dict) -> str:
        from readmission import steps

        summary = steps.report(loaded, clean, promotion)
        print(summary)
        return summary

    dataset = fetch_data(DATA_DIR, "{{ params.data_path }}")
    loaded = load_raw(RAW_URL, dataset, "{{ params.max_batches }}")
    clean = build_clean(RAW_URL, CLEAN_URL, loaded)
    families = candidate_families()
    candidates = train_candidate.partial(
        clean_url=CLEAN_URL,
        tracking_uri=TRACKING_URI,
        training_key=TRAINING_KEY,
        budget="{{ params.train_time_budget_seconds }}",
        max_trials="{{ params.max_trials }}",
        max_fit_rows="{{ params.max_fit_rows }}",
        families=families,
        clean=clean,
    ).expand(family=families)
    # The candidates reach the selection through MLflow (their runs carry the DAG run id), not XCom.
    promotion = select_and_promote(
        families, CLEAN_URL, TRACKING_URI, TRAINING_KEY, "{{ params.min_improvement }}", "{{ params.max_fit_rows }}"
    )
    candidates >> promotion
    report(loaded, clean, promotion)


diabetes_training_pipeline()
