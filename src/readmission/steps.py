"""The pipeline as steps for an orchestrator (the Airflow DAG): plain arguments in, JSON-ready summaries out.

Each step calls the same library functions as the `readmission` CLI; none reads the environment (the
caller passes every setting). Each is idempotent, so a retried task or a re-run DAG never duplicates:

- ``fetch_data``: the download cache is checksummed; a cached file is reused.
- ``load_raw``: the RAW ledger skips batches already loaded (and checks they still match the file).
- ``build_clean``: CLEAN is rebuilt from RAW in one transaction (same input, same output).
- ``train_family``: a finished candidate run of the same ``training_key`` and family is reused.
- ``select_and_promote``: a version already registered for ``training_key`` is reported, not registered
  again; the gate runs once per version.

``training_key`` names one training job (the DAG run id); its runs and its model version carry it as a tag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from readmission.clean import SplitSpec
from readmission.clean import build_clean as _build_clean
from readmission.db import create_db_engine, display_url
from readmission.raw import DEFAULT_BATCH_SIZE, SourceFile, load_raw_batches, raw_status
from readmission.source import UCI_ZIP_URL, resolve_dataset

Summary = dict[str, Any]


def fetch_data(
    data_dir: str, data_path: str | None = None, data_url: str = UCI_ZIP_URL, timeout_seconds: float = 60.0
) -> Summary:
    """Download the UCI file into ``data_dir`` (cached, checksummed) or check the local ``data_path``."""
    dataset = resolve_dataset(
        Path(data_dir), Path(data_path) if data_path else None, url=data_url, timeout_seconds=timeout_seconds
    )
    return {
        "path": str(dataset.path),
        "sha256": dataset.sha256,
        "official": dataset.is_official,
        "origin": dataset.origin,
    }


def load_raw(
    raw_url: str, data_path: str, batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int | None = None
) -> Summary:
    """Load up to ``max_batches`` pending batches (all when None) of ``data_path`` into RAW."""
    started = time.perf_counter()
    engine = create_db_engine(raw_url)
    try:
        report = load_raw_batches(engine, SourceFile.read(Path(data_path), batch_size), max_batches=max_batches)
        status = raw_status(engine)
    finally:
        engine.dispose()
    return {
        "database": display_url(raw_url),
        "batches_loaded_now": [r.batch_number for r in report.loaded],
        "rows_loaded_now": report.rows_loaded,
        "rows_quarantined_now": report.rows_quarantined,
        "batches_already_loaded": report.batches_already_loaded,
        "batches_pending": report.batches_pending,
        "batches_in_ledger": status.batches_loaded,
        "batches_total": status.batches_total,
        "raw_rows": status.rows,
        "seconds": round(time.perf_counter() - started, 2),
    }


def build_clean(
    raw_url: str,
    clean_url: str,
    split_seed: int = 42,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Summary:
    """Rebuild CLEAN from RAW with the patient-grouped split."""
    raw, clean = create_db_engine(raw_url), create_db_engine(clean_url)
    try:
        report = _build_clean(raw, clean, SplitSpec(split_seed, validation_fraction, test_fraction))
    finally:
        raw.dispose()
        clean.dispose()
    return {
        "database": display_url(clean_url),
        "raw_rows": report.raw_rows,
        "clean_rows": report.clean_rows,
        "excluded_rows": report.excluded_rows,
        "split_rows": dict(report.split_rows),
        "split_patients": dict(report.split_patients),
        "seconds": round(report.seconds, 2),
    }


def _candidate_summary(run: Any) -> Summary:
    metrics = run.data.metrics
    return {
        "family": run.data.tags["model_family"],
        "run_id": run.info.run_id,
        "model_uri": run.data.tags["candidate_model_uri"],
        "calibrated": run.data.tags.get("calibrated") == "True",
        "validation": {k.removeprefix("validation_"): v for k, v in metrics.items() if k.startswith("validation_")},
        "test": {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")},
        "fit_seconds": metrics.get("fit_seconds"),
    }


def _clean_with_lineage(clean_url: str, config: Any) -> tuple[Any, dict[str, str]]:
    """The CLEAN frame (all splits) and its lineage tags."""
    from readmission.clean import read_clean
    from readmission.training import clean_lineage

    engine = create_db_engine(clean_url)
    try:
        frame = read_clean(engine)
        return frame, clean_lineage(engine, frame, config)
    finally:
        engine.dispose()


def _candidate_runs(client: Any, training_key: str, family: str | None = None) -> list[Any]:
    """Finished candidate runs (with a logged model) of the training job ``training_key``, newest first."""
    from readmission.registry import EXPERIMENT_NAME
    from readmission.training import TRAINING_KEY_TAG

    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    query = f"tags.{TRAINING_KEY_TAG} = '{training_key}' and attributes.status = 'FINISHED'"
    if family is not None:
        query += f" and tags.model_family = '{family}'"
    runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"])
    return [run for run in runs if "candidate_model_uri" in run.data.tags]


def train_family(
    clean_url: str,
    tracking_uri: str,
    family: str,
    training_key: str,
    time_budget_seconds: float,
    seed: int = 0,
    artifact_location: str | None = None,
    max_trials: int | None = None,
) -> Summary:
    """Fit one model family on CLEAN within ``time_budget_seconds`` (at most ``max_trials`` trials) and track it
    (with its model) in MLflow."""
    from mlflow import MlflowClient

    from readmission import schema
    from readmission.modeling import model_input
    from readmission.training import (
        TrainConfig,
        fit_family,
        log_candidate,
        prepare_tracking,
    )

    config = TrainConfig(
        families=(family,), time_budget_seconds=time_budget_seconds, max_trials=max_trials or None, seed=seed
    )
    prepare_tracking(tracking_uri, artifact_location)
    client = MlflowClient()
    done = _candidate_runs(client, training_key, family)
    if done:
        return {**_candidate_summary(done[0]), "reused": True}
    frame, lineage = _clean_with_lineage(clean_url, config)
    splits = {s: frame[frame["split"] == s] for s in ("train", "validation", "test")}
    xy = {s: (model_input(f), f[schema.TARGET].astype(str)) for s, f in splits.items()}
    candidate = fit_family(family, xy["train"], xy["validation"], config, time_budget_seconds)
    log_candidate(candidate, xy["test"], lineage, training_key=training_key, log_model=True)
    return {**_candidate_summary(client.get_run(candidate.run_id)), "reused": False}


def select_and_promote(
    clean_url: str,
    tracking_uri: str,
    training_key: str,
    families: list[str],
    min_improvement: float = 0.0,
    seed: int = 0,
    artifact_location: str | None = None,
) -> Summary:
    """Register the best of the job's candidates (by validation) and move `champion` only if it is better.

    The candidates are the finished runs ``train_family`` tracked for ``training_key``: MLflow is the
    source of truth, so a re-run picks up exactly what was trained.
    """
    import mlflow
    from mlflow import MlflowClient

    from readmission.registry import CHAMPION, MODEL_NAME, SELECTION_METRIC
    from readmission.training import (
        Candidate,
        TrainConfig,
        prepare_tracking,
        register_and_gate,
        registered_for,
    )

    prepare_tracking(tracking_uri, artifact_location)
    client = MlflowClient()
    candidates = []
    for family in families:
        runs = _candidate_runs(client, training_key, family)
        if not runs:
            raise ValueError(f"no finished {family} candidate for training job {training_key}: train it first")
        candidates.append(_candidate_summary(runs[0]))
    best = max(candidates, key=lambda c: c["validation"][SELECTION_METRIC])
    version = registered_for(training_key)
    if version is None:
        config = TrainConfig(families=(best["family"],), seed=seed, min_improvement=min_improvement)
        frame, lineage = _clean_with_lineage(clean_url, config)
        winner = Candidate(
            best["family"],
            {},
            mlflow.sklearn.load_model(best["model_uri"]),
            best["validation"],
            test=best["test"],
            calibrated=best["calibrated"],
            run_id=best["run_id"],
            model_uri=best["model_uri"],  # registered as logged by the training task, not logged again
        )
        test, validation = (frame[frame["split"] == s] for s in ("test", "validation"))
        version, _ = register_and_gate(winner, test, validation, lineage, config, training_key=training_key)
    tags = client.get_model_version(MODEL_NAME, version).tags
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    return {
        "model": MODEL_NAME,
        "version": version,
        "family": best["family"],
        "promoted": tags.get("promotion.decision") == "promoted",
        "reason": tags.get("promotion.reason", ""),
        "champion_version": str(champion.version),
        f"test_{SELECTION_METRIC}": best["test"][SELECTION_METRIC],
        "candidates": {c["family"]: c["validation"][SELECTION_METRIC] for c in candidates},
    }


def report(load: Summary, clean: Summary, promotion: Summary) -> str:
    """One paragraph for the task log and the run's XCom."""
    return (
        f"RAW: {load['rows_loaded_now']:,} rows loaded now in batch(es) {load['batches_loaded_now'] or 'none'} "
        f"({load['batches_in_ledger']} of {load['batches_total']} batches in the ledger, {load['raw_rows']:,} rows). "
        f"CLEAN: {clean['clean_rows']:,} rows (train {clean['split_rows']['train']:,} / validation "
        f"{clean['split_rows']['validation']:,} / test {clean['split_rows']['test']:,}). "
        f"Model: {promotion['model']} v{promotion['version']} ({promotion['family']}, test "
        f"roc_auc_30 {promotion['test_roc_auc_30']:.4f}); "
        f"{'promoted to champion' if promotion['promoted'] else 'not promoted'}: {promotion['reason']}; "
        f"champion is v{promotion['champion_version']}."
    )
