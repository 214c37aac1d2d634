"""The pipeline as steps for an orchestrator (the Airflow DAG): plain arguments in, JSON-ready summaries out.

Each step calls the same library functions as the `readmission` CLI; none reads the environment (the
caller passes every setting). Each is idempotent, so a retried task or a re-run DAG never duplicates:

- ``fetch_data``: the download cache is checksummed; a cached file is reused.
- ``load_raw``: the RAW ledger skips batches already loaded (and checks they still match the file).
- ``build_clean``: CLEAN is rebuilt from RAW in one transaction (same input, same output).
- ``train_family``: a finished candidate run of the same ``training_key`` and family is reused.
- ``select_and_promote``: the version is registered with its ``training_key`` tag in the same registry call,
  so a retry finds it and never registers a second one; a version without a gate decision is gated
  (again), one with a decision is reported.

``training_key`` names one training job (the DAG run id, or a generated key for `readmission train`); its
runs and its model version carry it as a tag. ``train_job`` is the whole training job for the CLI: the same
steps as the DAG, one after the other, so selection and the gate exist once.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from readmission.clean import SplitSpec
from readmission.clean import build_clean as _build_clean
from readmission.db import create_db_engine, display_url
from readmission.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_FIT_ROWS
from readmission.raw import SourceFile, load_raw_batches
from readmission.source import UCI_ZIP_URL, resolve_dataset
from readmission.store_status import raw_status

if TYPE_CHECKING:
    from readmission.training import TrainConfig

Log = Callable[[str], None]


class FetchSummary(TypedDict):
    """What ``fetch_data`` found: the file, its checksum and where it came from."""

    path: str
    sha256: str
    official: bool
    origin: str


class LoadSummary(TypedDict):
    """What ``load_raw`` did now and what the RAW ledger holds."""

    database: str
    batches_loaded_now: list[int]
    rows_loaded_now: int
    rows_quarantined_now: int
    batches_already_loaded: int
    batches_pending: int
    batches_in_ledger: int
    batches_total: int | None
    raw_rows: int
    seconds: float


class CleanSummary(TypedDict):
    """The CLEAN build: row counts by split and patients by split."""

    database: str
    raw_rows: int
    clean_rows: int
    excluded_rows: int
    split_rows: dict[str, int]
    split_patients: dict[str, int]
    seconds: float


class CandidateSummary(TypedDict):
    """One family's best model, as its MLflow run records it (metrics by name, without the split prefix)."""

    family: str
    run_id: str
    model_uri: str
    calibrated: bool
    refit: bool
    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    fit_seconds: float | None
    reused: bool


class PromotionSummary(TypedDict):
    """The registered version of a training job and the gate's decision on it."""

    model: str
    version: str
    family: str
    promoted: bool
    reason: str
    previous_champion: str | None
    champion_version: str | None
    test_roc_auc_30: float
    champion_test_roc_auc_30: float | None
    candidates: dict[str, float]


class JobSummary(TypedDict):
    """``train_job``: every candidate and the promotion, under one training key."""

    training_key: str
    candidates: list[CandidateSummary]
    best: CandidateSummary
    promotion: PromotionSummary
    seconds: float


def fetch_data(
    data_dir: str, data_path: str | None = None, data_url: str = UCI_ZIP_URL, timeout_seconds: float = 60.0
) -> FetchSummary:
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
) -> LoadSummary:
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
) -> CleanSummary:
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


def _candidate_summary(run: Any, reused: bool) -> CandidateSummary:
    metrics = run.data.metrics
    return {
        "family": run.data.tags["model_family"],
        "run_id": run.info.run_id,
        "model_uri": run.data.tags["candidate_model_uri"],
        "calibrated": run.data.tags.get("calibrated") == "True",
        "refit": run.data.tags.get("refit") == "True",
        "threshold": metrics.get("chosen_threshold_30"),
        "validation": {k.removeprefix("validation_"): v for k, v in metrics.items() if k.startswith("validation_")},
        "test": {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")},
        "fit_seconds": metrics.get("fit_seconds"),
        "reused": reused,
    }


def _read_clean(clean_url: str, split: str | None = None) -> Any:
    from readmission.clean import read_clean

    engine = create_db_engine(clean_url)
    try:
        return read_clean(engine, split)
    finally:
        engine.dispose()


def _clean_with_lineage(clean_url: str, config: TrainConfig) -> tuple[Any, dict[str, str]]:
    """The CLEAN frame (all splits) and its lineage tags."""
    from readmission.clean import read_clean
    from readmission.training import clean_lineage

    engine = create_db_engine(clean_url)
    try:
        frame = read_clean(engine)
        return frame, clean_lineage(engine, frame, config)
    finally:
        engine.dispose()


def _splits(frame: Any) -> dict[str, Any]:
    """The train, validation and test rows of a CLEAN frame (its ``split`` column)."""
    return {s: frame[frame["split"] == s] for s in ("train", "validation", "test")}


def _fitted_splits(
    frame: Any, lineage: dict[str, str], config: TrainConfig, log: Log
) -> tuple[dict[str, Any], dict[str, str]]:
    """The splits the models are fitted and chosen on (``training.fit_sample``) and the lineage tags, with
    ``data.fit_sample`` when train and validation were cut."""
    from readmission.training import fit_sample

    splits, note = fit_sample(_splits(frame), config.max_fit_rows, config.seed)
    if not note:
        return splits, lineage
    log(f"  fitting on a patient sample: {note} (TRAIN_MAX_FIT_ROWS {config.max_fit_rows:,})")
    return splits, {**lineage, "data.fit_sample": note}


def _candidate_runs(client: Any, training_key: str, family: str) -> list[Any]:
    """Finished candidate runs (with a logged model) of ``family`` in the job ``training_key``, newest first."""
    from readmission.names import EXPERIMENT_NAME, TRAINING_KEY_TAG
    from readmission.registry import quote_filter_value

    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return []
    query = (
        f"tags.{TRAINING_KEY_TAG} = {quote_filter_value(training_key)} and attributes.status = 'FINISHED'"
        f" and tags.model_family = {quote_filter_value(family)}"
    )
    runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"])
    return [run for run in runs if "candidate_model_uri" in run.data.tags]


def new_training_key(origin: str = "cli") -> str:
    """A unique key for a training job started outside Airflow (UTC time and a random suffix)."""
    return f"{origin}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def train_family(
    clean_url: str,
    tracking_uri: str,
    family: str,
    training_key: str,
    time_budget_seconds: float,
    seed: int = 0,
    artifact_location: str | None = None,
    max_trials: int | None = None,
    log: Log = print,
    max_fit_rows: int | None = DEFAULT_MAX_FIT_ROWS,
) -> CandidateSummary:
    """Fit one model family on CLEAN within ``time_budget_seconds`` (at most ``max_trials`` trials) and track it
    (with its model) in MLflow; a finished run of the same job and family is reused. Train and validation are
    cut to a patient sample when train holds more than ``max_fit_rows`` rows (``training.fit_sample``)."""
    from mlflow import MlflowClient

    from readmission.modeling import model_input
    from readmission.schema import TARGET
    from readmission.training import TrainConfig, fit_family, log_candidate, prepare_tracking

    config = TrainConfig(
        families=(family,),
        time_budget_seconds=time_budget_seconds,
        max_trials=max_trials or None,
        seed=seed,
        max_fit_rows=max_fit_rows,
    )
    prepare_tracking(tracking_uri, artifact_location)
    client = MlflowClient()
    done = _candidate_runs(client, training_key, family)
    if done:
        return _candidate_summary(done[0], reused=True)
    frame, lineage = _clean_with_lineage(clean_url, config)
    splits, lineage = _fitted_splits(frame, lineage, config, log)
    del frame
    xy = {s: (model_input(f), f[TARGET].astype(str)) for s, f in splits.items()}
    candidate = fit_family(family, xy["train"], xy["validation"], config, time_budget_seconds, log)
    log_candidate(candidate, xy["test"], lineage, training_key=training_key, log_model=True)
    return _candidate_summary(client.get_run(candidate.run_id), reused=False)


def best_on_validation(candidates: list[CandidateSummary]) -> CandidateSummary:
    """The candidate with the highest validation ROC-AUC of the 30-day risk (the test split chooses nothing)."""
    from readmission.names import SELECTION_METRIC

    return max(candidates, key=lambda c: c["validation"][SELECTION_METRIC])


def _job_version(client: Any, training_key: str) -> str | None:
    """The version the job ``training_key`` registered (the lowest, should a past bug have made two), if any."""
    from mlflow.exceptions import MlflowException

    from readmission.names import MODEL_NAME, TRAINING_KEY_TAG
    from readmission.registry import quote_filter_value, unavailable_error

    query = f"name = {quote_filter_value(MODEL_NAME)} and tags.{TRAINING_KEY_TAG} = {quote_filter_value(training_key)}"
    try:
        versions = client.search_model_versions(query)
    except MlflowException as exc:
        raise unavailable_error(f"search the versions of job {training_key}", client, exc) from exc
    return str(min(int(v.version) for v in versions)) if versions else None


def _register(best: CandidateSummary, clean_url: str, training_key: str, config: TrainConfig, log: Log = print) -> str:
    """Log the winner's evidence to its run and register its logged model with every tag in one call."""
    import mlflow

    from readmission.names import TRAINING_KEY_TAG
    from readmission.training import Candidate, log_evidence_and_register

    frame, lineage = _clean_with_lineage(clean_url, config)
    splits, lineage = _fitted_splits(frame, lineage, config, lambda _line: None)
    winner = Candidate(
        best["family"],
        {},
        mlflow.sklearn.load_model(best["model_uri"]),
        best["validation"],
        test=best["test"],
        calibrated=best["calibrated"],
        threshold=best["threshold"] if best["threshold"] is not None else math.nan,
        refit=best["refit"],
        run_id=best["run_id"],
        model_uri=best["model_uri"],  # registered as the training task logged it, not logged again
    )
    tags = {**lineage, **{f"test_{k}": f"{v:.6f}" for k, v in best["test"].items()}, TRAINING_KEY_TAG: training_key}
    return log_evidence_and_register(winner, splits["train"], splits["test"], splits["validation"], config, tags, log)


def _gate(client: Any, version: str, best: CandidateSummary, clean_url: str, min_improvement: float) -> Any:
    """Run the `champion` gate on ``version`` (or read the decision it already has)."""
    from readmission.names import SELECTION_METRIC
    from readmission.registry import promote_if_better
    from readmission.training import _score_on

    scorer: list[Callable[[str], float]] = []

    def score_champion(champion: str) -> float:  # reads the test split only when there is a champion to score
        if not scorer:
            scorer.append(_score_on(_read_clean(clean_url, "test")))
        return scorer[0](champion)

    return promote_if_better(
        client, version, best["test"][SELECTION_METRIC], score_champion, min_improvement=min_improvement
    )


def _finished_candidates(client: Any, training_key: str, families: list[str]) -> list[CandidateSummary]:
    """The finished candidate of each family for ``training_key``; ``ValueError`` names a family without one."""
    candidates = []
    for family in families:
        runs = _candidate_runs(client, training_key, family)
        if not runs:
            raise ValueError(f"no finished {family} candidate for training job {training_key}: train it first")
        candidates.append(_candidate_summary(runs[0], reused=True))
    return candidates


def select_and_promote(
    clean_url: str,
    tracking_uri: str,
    training_key: str,
    families: list[str],
    min_improvement: float = 0.0,
    seed: int = 0,
    artifact_location: str | None = None,
    log: Log = print,
    max_fit_rows: int | None = DEFAULT_MAX_FIT_ROWS,
) -> PromotionSummary:
    """Register the best of the job's candidates (by validation) once, and move `champion` only if it is better.

    The candidates are the finished runs ``train_family`` tracked for ``training_key``: MLflow is the source of
    truth, so a re-run picks up exactly what was trained. Raises ``ValueError`` when a family has no finished
    candidate, and ``RegistryUnavailableError`` when the registry fails (nothing is promoted; run it again).
    """
    from mlflow import MlflowClient

    from readmission.names import MODEL_NAME, SELECTION_METRIC
    from readmission.training import TrainConfig, prepare_tracking

    prepare_tracking(tracking_uri, artifact_location)
    client = MlflowClient()
    candidates = _finished_candidates(client, training_key, families)
    best = best_on_validation(candidates)
    log(
        f"select: {best['family']} is best on validation ({SELECTION_METRIC} {best['validation'][SELECTION_METRIC]:.4f})"
    )
    config = TrainConfig(
        families=(best["family"],), seed=seed, min_improvement=min_improvement, max_fit_rows=max_fit_rows
    )
    started = time.perf_counter()
    version = _job_version(client, training_key) or _register(best, clean_url, training_key, config, log)
    log(f"register: {MODEL_NAME} v{version} ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    decision = _gate(client, version, best, clean_url, min_improvement)
    verdict = "promoted to champion" if decision.promoted else "champion unchanged"
    log(f"gate: v{version} {verdict}: {decision.reason} ({time.perf_counter() - started:.1f} s)")
    return _promotion_summary(client, version, best, decision, candidates)


def _promotion_summary(
    client: Any, version: str, best: CandidateSummary, decision: Any, candidates: list[CandidateSummary]
) -> PromotionSummary:
    """What ``select_and_promote`` reports: the registered version, the gate's decision and the champion now."""
    from readmission.names import MODEL_NAME, SELECTION_METRIC
    from readmission.registry import champion_version

    return {
        "model": MODEL_NAME,
        "version": version,
        "family": best["family"],
        "promoted": decision.promoted,
        "reason": decision.reason,
        "previous_champion": decision.previous_champion,
        "champion_version": champion_version(client),
        "test_roc_auc_30": best["test"][SELECTION_METRIC],
        "champion_test_roc_auc_30": decision.champion_score,
        "candidates": {c["family"]: c["validation"][SELECTION_METRIC] for c in candidates},
    }


def trial_share(budget_seconds: float, families: int) -> float:
    """Seconds of trials each family gets from the job's ``budget_seconds``: the budget less a reserve for
    selection, permutation importance, plots, registration and the gate (a fifth of it, 60 s at most), split
    equally. ``TrainConfig.importance_seconds`` (20 s) keeps the importance inside that reserve."""
    reserve = min(budget_seconds / 5, 60.0)
    return (budget_seconds - reserve) / families


def _log_plan(config: TrainConfig, share: float, log: Log) -> None:
    """The job's first line: the families, each one's seconds of trials, the trial cap and the budget."""
    cap = f", at most {config.max_trials} trial(s) each" if config.max_trials else ""
    log(
        f"train: {len(config.families)} famil{'y' if len(config.families) == 1 else 'ies'} "
        f"({', '.join(config.families)}), {share:.0f} s of trials each{cap}; budget {config.time_budget_seconds:.0f} s"
    )


def train_job(
    clean_url: str,
    tracking_uri: str,
    config: TrainConfig,
    *,
    artifact_location: str | None = None,
    training_key: str | None = None,
    log: Log = print,
) -> JobSummary:
    """The whole training job in one process (what `readmission train` runs): ``train_family`` for each family
    of ``config`` with an equal share of its time budget, then ``select_and_promote``; the DAG runs the same
    steps as tasks. ``training_key`` defaults to a new unique key (``new_training_key``)."""
    started = time.perf_counter()
    key = training_key or new_training_key()
    share = trial_share(config.time_budget_seconds, len(config.families))
    _log_plan(config, share, log)
    candidates = [
        train_family(
            clean_url, tracking_uri, family, key, share, config.seed, artifact_location, config.max_trials, log,
            max_fit_rows=config.max_fit_rows,
        )
        for family in config.families
    ]  # fmt: skip
    promotion = select_and_promote(
        clean_url, tracking_uri, key, list(config.families), config.min_improvement, config.seed, artifact_location, log,
        max_fit_rows=config.max_fit_rows,
    )  # fmt: skip
    best = next(c for c in candidates if c["family"] == promotion["family"])
    return {
        "training_key": key,
        "candidates": candidates,
        "best": best,
        "promotion": promotion,
        "seconds": time.perf_counter() - started,
    }


def report(load: LoadSummary, clean: CleanSummary, promotion: PromotionSummary) -> str:
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
