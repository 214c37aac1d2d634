"""Fit a candidate family on CLEAN, track it in MLflow, log the winner's evidence and register it.

The job that strings these together (and the `champion` gate) is ``readmission.steps``: one path for the
CLI and the Airflow DAG.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score

from readmission import __version__, schema
from readmission.evaluation import best_f1_threshold, classification_metrics, risk_of, write_plots
from readmission.modeling import FAMILIES, model_input
from readmission.names import (
    DEFAULT_MAX_FIT_ROWS,
    EXPERIMENT_NAME,
    IMPORTANCE_ARTIFACT,
    MODEL_NAME,
    PLOTS_FOLDER,
    REFERENCE_PROFILE_ARTIFACT,
    SELECTION_METRIC,
    TRAINING_KEY_TAG,
)

_TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "readmission.")
# sklearn stores functools.partial objects internally; skops still vets the function each one wraps.
_TRUSTED_NAMES = frozenset({"functools.partial"})


FIT_SAMPLE_SALT = 0x5A3F


def fit_sample_seed(seed: int) -> int:
    """The 64-bit seed of the fit sample's patient draw: ``seed`` and a salt through numpy's SeedSequence, so no
    split seed a user sets (a small integer) makes the sample's draw the split's own (``seed ^ salt`` could)."""
    return int(np.random.SeedSequence([seed, FIT_SAMPLE_SALT]).generate_state(1, np.uint64)[0])


def fit_sample(splits: dict[str, pd.DataFrame], max_rows: int | None, seed: int) -> tuple[dict[str, pd.DataFrame], str]:
    """``splits`` with train and validation cut to the same share of their patients when train holds more than
    ``max_rows`` rows (whole patients, drawn by ``clean.patient_draw``: about ``max_rows`` train rows, the same
    patients on every run with ``seed``); the test split is never cut (the champion gate compares on all of
    it). Also a one-line note of the sample for the run's tags ("" when nothing was cut). Raises ``ValueError``
    for ``max_rows`` below 1."""
    from readmission.clean import patient_draw

    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1 (None: no sample), got {max_rows}")
    train = splits["train"]
    if max_rows is None or len(train) <= max_rows:
        return splits, ""
    share = max_rows / len(train)
    cut = {
        name: frame[patient_draw(frame["patient_nbr"], fit_sample_seed(seed)) < share]
        for name, frame in splits.items()
        if name != "test"
    }
    note = ", ".join(f"{name} {len(cut[name]):,} of {len(splits[name]):,} rows" for name in cut)
    return {**splits, **cut}, f"{note} (patients drawn at {share:.3f}, seed {seed}; test split whole)"


@dataclass(frozen=True)
class TrainConfig:
    """How training runs. Defaults finish the full data set in a few minutes on 2 cores."""

    families: tuple[str, ...] = tuple(FAMILIES)
    time_budget_seconds: float = 300.0
    max_trials: int | None = None  # per family; None: as many as the time budget allows (timing-dependent)
    seed: int = 0
    min_improvement: float = 0.0
    calibration_tolerance: float = 0.1  # recalibrate when the validation slope is outside 1 +/- this
    refit: bool = True  # fit the chosen trial again on train + validation (``fit_family``)
    importance_rows: int = 3_000  # permutation-importance sample at most...
    importance_seconds: float = 20.0  # ...cut so that the importance takes about this long (``importance_sample``;
    # on the full data it took 41 s against a target of 30 s: the estimate is low by about a third)
    max_fit_rows: int | None = DEFAULT_MAX_FIT_ROWS  # train rows fitted at most (``fit_sample``); None: all
    code_version: str = __version__

    def __post_init__(self) -> None:
        if self.max_fit_rows is not None and self.max_fit_rows < 1:
            raise ValueError(f"max_fit_rows must be at least 1 (None: fit every row), got {self.max_fit_rows}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown model families {unknown}; choose from {', '.join(FAMILIES)}")


@dataclass
class Candidate:
    """The best trial of one family, fitted and evaluated."""

    family: str
    params: dict[str, Any]
    model: Any
    validation: dict[str, float]
    test: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    trials: int = 0
    calibrated: bool = False
    threshold: float = math.nan  # F1-best risk threshold for the 30-day class, chosen on validation
    refit: bool = False  # fitted again on train + validation after everything was chosen
    # Rows the kept model was fitted on: train, or train + validation when refitted (a recalibrated model is not
    # refitted: its trees saw train, its sigmoid calibrator validation on top).
    fit_rows: int = 0
    run_id: str = ""
    model_uri: str = ""  # set when the model is already logged (a candidate run of an Airflow task)


def _early(labels: pd.Series) -> np.ndarray:
    early: np.ndarray = (labels.to_numpy(dtype=object) == schema.POSITIVE_LABEL).astype(int)
    return early


def _calibrate_if_needed(
    model: Any, metrics: dict[str, float], x_val: pd.DataFrame, y_val: pd.Series, tolerance: float
) -> tuple[Any, bool]:
    """``model`` as it is if its validation ``metrics`` show it calibrated, else wrapped in a sigmoid calibrator."""
    if abs(metrics["calibration_slope_30"] - 1.0) <= tolerance and abs(metrics["calibration_intercept_30"]) <= 0.2:
        return model, False
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid").fit(x_val, y_val)
    return calibrated, True


def _best_trial(
    name: str,
    train: tuple[pd.DataFrame, pd.Series],
    validation: tuple[pd.DataFrame, pd.Series],
    config: TrainConfig,
    budget_seconds: float,
    log: Callable[[str], None],
) -> Candidate:
    """The family's trials fitted on ``train`` within the budget; the best by validation ROC-AUC (unrefitted)."""
    (x_train, y_train), (x_val, y_val) = train, validation
    family_started = time.perf_counter()
    winner: Candidate | None = None
    slowest = 0.0
    for trial, (params, pipeline) in enumerate(FAMILIES[name].candidates(config.seed), start=1):
        left = budget_seconds - (time.perf_counter() - family_started)
        if winner is not None and slowest > left:
            log(f"  {name}: no trial {trial}: the slowest so far took {slowest:.0f} s, {max(left, 0):.0f} s remain")
            break
        started = time.perf_counter()
        pipeline.fit(x_train, y_train)
        metrics = classification_metrics(y_val, *risk_of(pipeline, x_val))
        seconds = time.perf_counter() - started
        log(
            f"  {name} trial {trial} {params}: validation {SELECTION_METRIC} {metrics[SELECTION_METRIC]:.4f} ({seconds:.1f} s)"
        )
        if winner is None or metrics[SELECTION_METRIC] > winner.validation[SELECTION_METRIC]:
            winner = Candidate(name, params, pipeline, metrics, fit_seconds=seconds, fit_rows=len(x_train))
        winner.trials = trial
        slowest = max(slowest, seconds)
        if trial == config.max_trials:
            break
    assert winner is not None
    return winner


def fit_family(
    name: str,
    train: tuple[pd.DataFrame, pd.Series],
    validation: tuple[pd.DataFrame, pd.Series],
    config: TrainConfig,
    budget_seconds: float,
    log: Callable[[str], None] = print,
) -> Candidate:
    """Fit one family's trials within ``budget_seconds`` (and ``config.max_trials``); keep its best by validation.

    The first trial always runs; a further trial starts only when the slowest trial so far fits in the seconds
    left, so the trials end near ``budget_seconds`` rather than one long trial past it. With only a time budget,
    how many trials run depends on the machine's speed; set ``max_trials`` for a run that is the same everywhere.

    Everything is chosen on validation with the trial fitted on ``train``: the trial, whether to recalibrate
    (when its validation calibration is off, the model is wrapped in a sigmoid calibrator fitted on validation)
    and the F1-best threshold of the model kept (``Candidate.threshold``). ``Candidate.validation`` keeps the
    train-only fit's metrics, out of sample: they choose among families. Then, with ``config.refit`` and no
    recalibration, the chosen parameters are fitted again on train + validation (``Candidate.refit``): 21 %
    more patients, and the learning curve was still rising (validation ROC-AUC +0.005 from 55 % to 70 % of the
    patients, 5 seeds, CHANGELOG #20). A boosted model's early stopping picks its number of trees again in
    the refit, on its own 10 % of the rows it is given. The refit comes after the trials, outside
    ``budget_seconds`` (15 s for the boosted chain on the full file here).
    """
    (x_train, y_train), (x_val, y_val) = train, validation
    winner = _best_trial(name, train, validation, config, budget_seconds, log)
    winner.model, winner.calibrated = _calibrate_if_needed(
        winner.model, winner.validation, x_val, y_val, config.calibration_tolerance
    )
    winner.threshold = best_f1_threshold(_early(y_val), risk_of(winner.model, x_val)[1])
    if config.refit and not winner.calibrated:
        started = time.perf_counter()
        both = pd.concat([x_train, x_val]), pd.concat([y_train, y_val])
        winner.model, winner.refit = FAMILIES[name].build(**winner.params).fit(*both), True
        winner.fit_rows = len(both[0])
        log(f"  {name}: refitted on train + validation ({len(both[0]):,} rows, {time.perf_counter() - started:.1f} s)")
    return winner


def data_lineage(frame: pd.DataFrame, clean_build: dict[str, str]) -> dict[str, str]:
    """What the model was trained on: batches, split seed, row counts, a checksum of the labelled split."""
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(frame[["encounter_id", "split", schema.TARGET]], index=False).to_numpy().tobytes()
    ).hexdigest()
    counts = frame["split"].value_counts()
    return {
        **clean_build,
        "data.rows": str(len(frame)),
        **{f"data.{s}_rows": str(int(counts.get(s, 0))) for s in ("train", "validation", "test")},
        "data.checksum": digest,
    }


def _trusted_types(model: Any) -> list[str]:
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    outside = [t for t in found if not t.startswith(_TRUSTED_MODULE_PREFIXES) and t not in _TRUSTED_NAMES]
    if outside:
        raise TypeError(f"refusing to trust types outside sklearn/numpy/scipy/readmission: {outside}")
    return list(found)


def _signature(classes: int) -> Any:
    """Inputs: the contract's 53 model inputs. Output: ``predict_proba``'s (rows, ``classes``) float64 array,
    columns in the model's ``classes_`` order: what the pyfunc flavour (and `mlflow models serve`) answers."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs: list[ColSpec | TensorSpec] = []
    for name in schema.MODEL_INPUT_NAMES:
        col = schema.COLUMNS_BY_NAME.get(name)
        kind = "long" if col is None or col.is_integer or col.kind is schema.Kind.INTEGER else "string"
        inputs.append(ColSpec(kind, name, required=not (col is not None and col.may_be_missing)))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype("float64"), (-1, classes))]))


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "pandas", "numpy", "scipy", "skops", "mlflow")]


def _log_model(model: Any, name: str, input_example: pd.DataFrame | None = None) -> Any:
    """Log ``model`` to the active run in skops format with the reviewed trusted types; its ModelInfo.

    Its pyfunc flavour predicts with ``predict_proba`` (MLflow's default, ``predict``, answers class labels): a
    generic MLflow consumer (`mlflow models serve`, ``mlflow.pyfunc.load_model``) gets the same probabilities
    as this project's API."""
    import mlflow

    return mlflow.sklearn.log_model(
        model,
        name=name,
        serialization_format="skops",
        skops_trusted_types=_trusted_types(model),
        signature=_signature(len(model.classes_)),
        pyfunc_predict_fn="predict_proba",
        input_example=input_example,
        pip_requirements=_pip_requirements(),
    )


def log_evidence_and_register(
    best: Candidate,
    train: pd.DataFrame,
    test: pd.DataFrame,
    validation: pd.DataFrame,
    config: TrainConfig,
    tags: dict[str, str],
    log: Callable[[str], None] = print,
) -> str:
    """Log the winner's threshold, plots and importance (and its model unless already logged) to its run, then
    register it with ``tags`` in the same registry call (a version never exists without them).

    The run also gets the reference profile of ``train``'s model inputs (``drift.build_profile``, the monitor's
    baseline of input drift), the train split's rows also when the model was refitted on train + validation: the
    patient-grouped split draws both from the same population.

    Returns the new version number. ``validation`` is read only for a candidate logged before thresholds were
    chosen with the trial (no ``chosen_threshold_30`` on its run): its threshold is chosen there.
    """
    import mlflow

    from readmission.drift import build_profile

    x_test, y_test = model_input(test), test[schema.TARGET].astype(str)
    threshold = best.threshold
    if math.isnan(threshold):  # a candidate logged before thresholds were chosen with the trial
        x_val, y_val = model_input(validation), validation[schema.TARGET].astype(str)
        threshold = best_f1_threshold(_early(y_val), risk_of(best.model, x_val)[1])
    started = time.perf_counter()
    log(f"  evidence: permutation importance of {best.family} (about {config.importance_seconds:.0f} s)")
    importance = _importance(best.model, x_test, y_test, config)
    log(f"  evidence: importance done ({time.perf_counter() - started:.1f} s); plots and registration")
    _, test_risk = risk_of(best.model, x_test)
    with mlflow.start_run(run_id=best.run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_metric("chosen_threshold_30", threshold)
        for path in write_plots(Path(tmp), y_test, test_risk, threshold, importance):
            mlflow.log_artifact(str(path), artifact_path=PLOTS_FOLDER)
        mlflow.log_dict(importance.sort_values(ascending=False).to_dict(), IMPORTANCE_ARTIFACT)
        mlflow.log_dict(build_profile(model_input(train)), REFERENCE_PROFILE_ARTIFACT)
        model_uri = best.model_uri or _log_model(best.model, "model", input_example=x_test.head(3)).model_uri
    with contextlib.redirect_stderr(io.StringIO()) as said:  # MLflow prints its own "Successfully registered..."
        version = mlflow.register_model(model_uri, MODEL_NAME, tags={"model_family": best.family, **tags})
    for line in said.getvalue().splitlines():  # anything but those routine lines still reaches the user
        if not line.startswith(_ROUTINE_REGISTRY_LINES):
            print(line, file=sys.stderr)
    return str(version.version)


IMPORTANCE_REPEATS = 2
# What mlflow.register_model prints to stderr on every registration (the `register:` line says it instead).
_ROUTINE_REGISTRY_LINES = ("Successfully registered model", "Created version", "Registered model")


def importance_sample(model: Any, x: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The rows of ``x`` permutation importance uses: at most ``config.importance_rows``, and few enough that
    its ``columns x IMPORTANCE_REPEATS`` predictions take about ``config.importance_seconds`` at the speed of one
    timed prediction on 500 rows (at least 300 rows, so the ranking stays usable)."""
    probe = x.sample(min(500, len(x)), random_state=config.seed)
    started = time.perf_counter()
    risk_of(model, probe)
    per_row = (time.perf_counter() - started) / len(probe)
    predictions = x.shape[1] * IMPORTANCE_REPEATS + 1
    fits = int(config.importance_seconds / max(per_row * predictions, 1e-9))
    rows = min(config.importance_rows, len(x), max(fits, 300))
    return x.sample(rows, random_state=config.seed)


def _importance(model: Any, x: pd.DataFrame, y: pd.Series, config: TrainConfig) -> pd.Series:
    """Permutation importance (drop in ROC-AUC of the 30-day risk) on a sample of ``x`` (``importance_sample``).

    Training passes the test split: a refitted model has seen validation, and the importance chooses nothing.
    """
    sample = importance_sample(model, x, config)
    importance = permutation_importance(
        model,
        sample,
        _early(y.loc[sample.index]),
        scoring=lambda est, x, y: roc_auc_score(y, risk_of(est, x)[1]),
        n_repeats=IMPORTANCE_REPEATS,
        random_state=config.seed,
    )
    return pd.Series(importance.importances_mean, index=sample.columns)


def _score_on(frame: pd.DataFrame) -> Callable[[str], float]:
    x, y = model_input(frame), _early(frame[schema.TARGET].astype(str))

    def score(version: str) -> float:
        import mlflow

        model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version}")
        return float(roc_auc_score(y, risk_of(model, x)[1]))

    return score


def prepare_tracking(tracking_uri: str, artifact_location: str | None = None) -> None:
    """Point MLflow at ``tracking_uri`` and make sure the experiment exists (local stores get an artifact folder)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT_NAME) is None:
        mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)
    mlflow.set_experiment(EXPERIMENT_NAME)


def clean_lineage(clean_engine: Any, frame: pd.DataFrame, config: TrainConfig) -> dict[str, str]:
    """``data_lineage`` of the CLEAN build ``frame`` was read from."""
    from readmission.store_status import clean_status

    build = clean_status(clean_engine)
    return data_lineage(
        frame,
        {
            "data.raw_batches": build.raw_batches,
            "data.split_seed": str(build.split_seed),
            "data.clean_built_at": str(build.built_at),
            "code.version": config.code_version,
        },
    )


def log_candidate(
    candidate: Candidate,
    test: tuple[pd.DataFrame, pd.Series],
    lineage: dict[str, str],
    *,
    nested: bool = False,
    training_key: str | None = None,
    log_model: bool = False,
) -> None:
    """Score ``candidate`` on the test split and track it as a run (with its fitted model when ``log_model``).

    The model is logged when another process will pick the winner (one Airflow task per family); its URI
    is then the run's tag ``candidate_model_uri``.
    """
    import mlflow

    candidate.test = classification_metrics(test[1], *risk_of(candidate.model, test[0]))
    with mlflow.start_run(run_name=candidate.family, nested=nested) as run:
        candidate.run_id = run.info.run_id
        tags = {
            **lineage,
            "model_family": candidate.family,
            "calibrated": str(candidate.calibrated),
            "refit": str(candidate.refit),
        }
        if training_key:
            tags[TRAINING_KEY_TAG] = training_key
        mlflow.set_tags(tags)
        mlflow.log_params({**candidate.params, "family": candidate.family, "trials": candidate.trials})
        mlflow.log_metrics(
            {
                **{f"validation_{k}": v for k, v in candidate.validation.items()},
                **{f"test_{k}": v for k, v in candidate.test.items()},
                "fit_seconds": candidate.fit_seconds,
                "fit_rows": candidate.fit_rows,
                **({} if math.isnan(candidate.threshold) else {"chosen_threshold_30": candidate.threshold}),
            }
        )
        if log_model:
            candidate.model_uri = _log_model(candidate.model, "candidate", input_example=test[0].head(3)).model_uri
            mlflow.set_tag("candidate_model_uri", candidate.model_uri)
