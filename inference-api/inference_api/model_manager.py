"""The served model: loaded from the registry alias, smoke-tested, swapped atomically, polled for changes.

``current`` is one immutable ``LoadedModel``; a swap replaces the reference in one assignment, so a
request (or a micro-batch) that took the old one finishes with it and the next takes the new one. A new
version is swapped in only after it has loaded and answered a smoke prediction; if it fails, the old one
keeps serving and the failure is counted and logged. While nothing is loaded the service is not ready
and ``not_ready_reason`` says why; the poller retries with backoff.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from inference_api.metrics import Metrics
from readmission import schema
from readmission.explanation import Explainer, NotExplainableError
from readmission.serving import PREDICTION_PATHS, Predictor, Row, rows_to_frame

log = logging.getLogger(__name__)

CLASS_ORDER = ("NO", ">30", "<30")  # the order of the classes in every answer


@dataclass(frozen=True)
class LoadedModel:
    """A registry version in memory, ready to predict."""

    name: str
    version: str
    alias: str | None  # None once the registry no longer points the alias at this version
    run_id: str
    predictor: Predictor
    loaded_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    registry_status: str = "ok"  # ok / alias_missing / version_deleted / alias_moved (REGISTRY_STATUSES)
    registry_message: str | None = None  # what the registry says, when the status is not ok
    explainer: Explainer | None = None  # None: explanations are not served, ``explain_problem`` says why
    explain_problem: str | None = None
    # Columns of NO, >30 and <30 in the predictor's probabilities (its ``classes_`` order).
    class_columns: list[int] = field(init=False)

    def __post_init__(self) -> None:
        labels = [str(label) for label in self.predictor.classes_]
        object.__setattr__(self, "class_columns", [labels.index(c) for c in CLASS_ORDER])


@dataclass(frozen=True)
class VersionRef:
    """What the alias points at in the registry."""

    version: str
    run_id: str


REGISTRY_OK, ALIAS_MISSING, VERSION_DELETED = "ok", "alias_missing", "version_deleted"
SERVICE_ROLE = ("inference", "MLFLOW_INFERENCE_PASSWORD in inference-api/secrets.env")  # its MLflow user
ALIAS_MOVED = "alias_moved"  # the alias names another version, which failed to load
# First word of not_ready_reason before the first registry read, and while the first model loads (scripts/serve.py
# and the page read them: the service will be ready by itself, nothing for the user to do).
STARTING, LOADING = "starting", "loading"
REGISTRY_STATUSES = (REGISTRY_OK, ALIAS_MISSING, VERSION_DELETED, ALIAS_MOVED)


class AliasNotFoundError(LookupError):
    """The registry answered that the alias (or the registered model) does not exist: an answer, not an outage.
    ``forbidden``: it answered 403 instead (model deleted or renamed since the grant, or the grant revoked), so
    whether the version still exists cannot be asked either."""

    def __init__(self, message: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class ModelSource:
    """Registry access through the MLflow client (kept behind a small interface for clarity)."""

    def __init__(self, tracking_uri: str, name: str, alias: str, threads: int | None = None) -> None:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.alias = alias
        self.threads = threads  # cap of scikit-learn's thread pools in model calls (``readmission.threads``)

    @property
    def client(self) -> Any:
        """The MLflow client (the service's read-only user): ``model_details`` reads versions and artifacts with it."""
        return self._client

    def resolve(self) -> VersionRef:
        """The version the alias points at.

        The alias is read from the registered model (MLflow answers a missing alias with the same error code
        as a bad argument, so it is not inferred from an error; the rule is ``readmission.registry``'s).
        Raises ``AliasNotFoundError`` when the registry says the alias (or the model) does not exist, or
        refuses this user the model (403: MLflow answers so for a model deleted or renamed since the grant,
        or a grant revoked; the service cannot vouch for the alias either way), and any other exception when
        the registry cannot be read (an outage).
        """
        from readmission.registry import RegistryUnavailableError, alias_version, is_forbidden

        try:
            version = alias_version(self._client, self.alias, self.name)
        except RegistryUnavailableError as exc:
            if not is_forbidden(exc.__cause__):
                raise
            user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(anonymous)"
            raise AliasNotFoundError(
                f"MLflow user {user} may not read model {self.name!r} (403): the model was deleted or renamed, or "
                "the user's grant was revoked (an admin re-runs the mlflow-users Job; MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD name the user)",
                forbidden=True,
            ) from exc
        if version is None:
            raise AliasNotFoundError(f"model {self.name!r} has no alias `{self.alias}`")
        found = self._client.get_model_version(self.name, version)
        return VersionRef(str(found.version), str(found.run_id or ""))

    def version_exists(self, version: str) -> bool:
        """Whether the registry still holds ``version`` of the model (raises when it cannot be read)."""
        from mlflow.exceptions import MlflowException

        from readmission.registry import is_not_found

        try:
            self._client.get_model_version(self.name, version)
        except MlflowException as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    def load(self, ref: VersionRef) -> tuple[Any, dict[str, float]]:
        """The fitted model object of a version and its run's metrics."""
        import mlflow.sklearn

        model = mlflow.sklearn.load_model(f"models:/{self.name}/{ref.version}")
        metrics: dict[str, float] = {}
        if ref.run_id:
            metrics = {k: float(v) for k, v in self._client.get_run(ref.run_id).data.metrics.items()}
        return model, metrics

    def predictor(self, model: Any) -> Predictor:
        """The predictor of a loaded model (compiles the fast path when the model allows it)."""
        return Predictor(model, self.threads)


def smoke_test(predictor: Predictor) -> None:
    """Predict the example patients; raise if the answer is not a proper distribution over the classes."""
    if sorted(str(c) for c in predictor.classes_) != sorted(schema.TARGET_LABELS):
        raise ValueError(f"model classes {list(predictor.classes_)} are not {sorted(schema.TARGET_LABELS)}")
    probabilities = predictor.predict_proba(list(schema.EXAMPLE_ENCOUNTERS.values()))
    if probabilities.shape != (len(schema.EXAMPLE_ENCOUNTERS), len(schema.TARGET_LABELS)):
        raise ValueError(f"smoke prediction has shape {probabilities.shape}")
    if not np.all(np.isfinite(probabilities)) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("smoke prediction is not a probability distribution")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


FAST_PATH_TOLERANCE = 1e-9  # largest difference allowed between the fast path's and the pipeline's probabilities
FAST_PATH_SAMPLE_ROWS = 200  # synthetic encounters checked at load, besides the contract's examples


@functools.cache
def fast_path_rows() -> list[dict[str, Any]]:
    """The rows the fast path is proven on: the contract's example encounters plus a fixed synthetic sample,
    validated as a request would be."""
    from readmission.synthetic import synthetic_encounters

    raw = synthetic_encounters(FAST_PATH_SAMPLE_ROWS, seed=20_240_611).to_dict("records")
    encounters = [*schema.EXAMPLE_ENCOUNTERS.values(), *(schema.raw_to_encounter(r) for r in raw)]
    return [schema.EncounterFeatures.model_validate(e).model_dump(exclude={schema.ENCOUNTER_ID}) for e in encounters]


@dataclass(frozen=True)
class FastPathCheck:
    """The fast path against the pipeline on ``rows`` rows: ``max_difference`` (probability units) and the
    indexes (into ``fast_path_rows()``) of the rows that differ by more than ``FAST_PATH_TOLERANCE``."""

    rows: int
    max_difference: float
    mismatched_rows: list[int]

    @property
    def agrees(self) -> bool:
        return not self.mismatched_rows


def check_fast_path(predictor: Predictor, rows: list[dict[str, Any]]) -> FastPathCheck:
    """Compare the compiled path's probabilities with the pipeline's ``predict_proba`` (shape rows x classes)."""
    fast = predictor.predict_proba(rows)
    reference = np.asarray(predictor.model.predict_proba(rows_to_frame(rows)), dtype=float)
    if fast.shape != reference.shape:
        return FastPathCheck(len(rows), float("inf"), list(range(len(rows))))
    difference = np.abs(fast - reference).max(axis=1)
    bad = np.flatnonzero(~(difference <= FAST_PATH_TOLERANCE))  # NaN counts as a mismatch
    worst = float(np.nanmax(difference)) if np.isfinite(difference).any() else float("inf")
    return FastPathCheck(len(rows), worst, bad.tolist())


EXPLAIN_TOLERANCE = 1e-6  # largest difference allowed at load between the explained value and the model's output
EXPLAIN_CHECK_ROWS = 16  # the example encounters and the first synthetic ones: a forest's rows cost ~0.5 s each


def prove_explainer(model: Any, rows: list[dict[str, Any]]) -> tuple[Explainer | None, str | None]:
    """(the model's explainer, None) when it explains the check ``rows`` exactly (within ``EXPLAIN_TOLERANCE``
    of the model's own 30-day output, computed by scikit-learn), else (None, why). Run once per load; its
    first call also compiles the TreeSHAP kernel, so no request pays for that."""
    try:
        explainer = Explainer(model)
        difference = float(np.max(np.abs(explainer.explain(rows).values - explainer.model_output(rows))))
    except NotExplainableError as exc:
        return None, f"this model cannot be explained: {exc}"
    except Exception as exc:
        log.exception("the explainer failed on the check rows")
        return None, f"the explainer failed on the check rows ({type(exc).__name__}; the service's log has the details)"
    if not difference <= EXPLAIN_TOLERANCE:
        return None, f"explanations differ from the model by {difference:.3g} on the check rows; not served"
    return explainer, None


class PipelinePredictor(Predictor):
    """A predictor that always calls the model object itself (``path`` "pipeline"); ``fallback_reason`` says
    why when it stands in for a fast path that failed its check at load."""

    def __init__(self, model: Any, fallback_reason: str | None = None, threads: int | None = None) -> None:
        super().__init__(model, threads)
        self.path = "pipeline"
        self.fallback_reason = fallback_reason

    def _predict(self, rows: Sequence[Row]) -> np.ndarray:
        result: np.ndarray = self.model.predict_proba(rows_to_frame(rows))
        return result


def _warn_if_uncompiled(version: str, model: Any, predictor: Predictor) -> None:
    """Say so when a version has no compiled path (not a fallback: that one is logged as an error already)."""
    if predictor.path == "pipeline" and not getattr(predictor, "fallback_reason", None):
        log.warning(
            "version %s (%s) has no compiled path: every request runs the scikit-learn pipeline, several times "
            "slower per request than a compiled champion (README: serving paths); its thread pools are capped at %s",
            version, type(model).__name__, predictor.threads or "(no cap)",
        )  # fmt: skip


class ModelManager:
    """Holds the served model and keeps it in step with the registry alias."""

    def __init__(
        self,
        source_factory: Callable[[], ModelSource],
        metrics: Metrics,
        poll_interval: float = 30.0,
        retry_max: float = 30.0,
    ) -> None:
        self._source_factory = source_factory
        self._source: ModelSource | None = None
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._retry_max = retry_max
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self.current: LoadedModel | None = None
        self.not_ready_reason = f"{STARTING}: the registry has not been read yet"
        self.last_error: str | None = None
        self._failed_version: str | None = None

    def registry_source(self) -> ModelSource:
        """The registry access the poller uses (built now when the first check has not run yet; raises what the
        factory raises)."""
        if self._source is None:
            self._source = self._source_factory()
        return self._source

    def start(self) -> None:
        """Begin polling (the first check runs at once)."""
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop polling; with ``wait``, wait (10 s at most) for a check in progress (the thread is a daemon)."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(10)

    def check(self) -> str:
        """Compare the alias with the served version; load and swap if it moved. Returns what happened."""
        with self._lock:
            outcome = self._check()
            if outcome == "swapped":
                # The new model lives until the next swap: keep it out of the collector's full passes.
                # Unfreeze first, so the replaced model's objects (frozen at its own swap) become
                # collectable; here, after _check returned, no frame of ours refers to the old model.
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            return outcome

    def _check(self) -> str:
        try:
            if self._source is None:
                self._source = self._source_factory()
            ref = self._source.resolve()
        except AliasNotFoundError as exc:
            return self._alias_gone(exc)
        except Exception as exc:
            return self._registry_error(exc)
        current = self.current
        if current is not None and current.version == ref.version:
            if current.registry_status != REGISTRY_OK:
                return self._restore(current)
            self._metrics.model_checks.labels(outcome="unchanged").inc()
            return "unchanged"
        return self._load(ref, current)

    def _registry_error(self, exc: Exception) -> str:
        """The registry could not be read: keep the model and its last known status, count and log it."""
        from readmission.errors import access_advice

        advice = access_advice(exc.__cause__ or exc, os.environ.get("MLFLOW_TRACKING_USERNAME"), SERVICE_ROLE)
        reason = f"cannot resolve the registry alias: {_short(exc)}" + (f"; {advice}" if advice else "")
        self._metrics.model_checks.labels(outcome="registry_error").inc()
        self.last_error = reason
        if self.current is None:
            self.not_ready_reason = reason
        log.warning("%s", reason)
        return "registry_error"

    def _alias_gone(self, exc: AliasNotFoundError) -> str:
        """The registry says the alias does not exist: keep serving the last good model, without the alias."""
        assert self._source is not None
        name, alias, current = self._source.name, self._source.alias, self.current
        if current is None:
            self.not_ready_reason = (
                str(exc) if exc.forbidden else f"the registry has no `{alias}` version of {name} ({exc})"
            )
            self._metrics.model_checks.labels(outcome=ALIAS_MISSING).inc()
            return ALIAS_MISSING
        exists: bool | None = None
        if not exc.forbidden:  # a 403 would answer the version lookup the same way: no need to ask
            try:
                exists = self._source.version_exists(current.version)
            except Exception as lookup_error:  # the alias is gone all the same: drop the label, check again later
                self._registry_error(lookup_error)
        status = VERSION_DELETED if exists is False else ALIAS_MISSING
        what = (
            str(exc)
            if exc.forbidden
            else {
                True: "the alias was deleted",
                False: "the version was deleted from the registry",
                None: "the alias was deleted; whether the version still exists could not be checked",
            }[exists]
        )
        message = (
            f"the registry no longer names version {current.version} of {name} `{alias}` ({what}); it is still "
            f"served (the last good model) until `{alias}` is set again"
        )
        self.last_error = message
        if current.registry_status != status:
            log.warning("%s", message)
            self._publish(replace(current, alias=None, registry_status=status, registry_message=message))
        self._metrics.model_checks.labels(outcome=status).inc()
        return status

    def _restore(self, current: LoadedModel) -> str:
        """The alias points at the served version again: label it with the alias again."""
        assert self._source is not None
        self._publish(replace(current, alias=self._source.alias, registry_status=REGISTRY_OK, registry_message=None))
        self.last_error = None
        self._metrics.model_checks.labels(outcome="restored").inc()
        log.info("the registry names version %s `%s` again", current.version, self._source.alias)
        return "restored"

    def _load(self, ref: VersionRef, current: LoadedModel | None) -> str:
        """Load, prove and smoke-test ``ref``, then swap it in (or keep ``current`` and count the failure)."""
        assert self._source is not None
        try:
            started = time.perf_counter()
            if current is None:
                self.not_ready_reason = (
                    f"{LOADING} version {ref.version} of {self._source.name} (`{self._source.alias}`)"
                )
            elif current.registry_status != ALIAS_MOVED:
                self._label_moved(current, ref.version, "is being loaded")
            model, run_metrics = self._source.load(ref)
            predictor = self._proven(model, ref.version)
            smoke_test(predictor)
            explainer, explain_problem = prove_explainer(model, fast_path_rows()[:EXPLAIN_CHECK_ROWS])
        except Exception as exc:
            return self._load_failed(ref, current, exc)
        if explain_problem:
            log.warning("version %s: %s; predictions are served without explanations", ref.version, explain_problem)
        loaded = LoadedModel(
            name=self._source.name,
            version=ref.version,
            alias=self._source.alias,
            run_id=ref.run_id,
            predictor=predictor,
            loaded_at=datetime.now(UTC),
            metrics=run_metrics,
            explainer=explainer,
            explain_problem=explain_problem,
        )
        self._publish(loaded)  # the swap: one reference assignment
        self.last_error = None
        self._failed_version = None
        self._metrics.model_loads.inc()
        self._metrics.model_checks.labels(outcome="swapped").inc()
        log.info(
            "serving %s version %s (alias %s, run %s, %s path), loaded in %.1f s%s",
            loaded.name, loaded.version, loaded.alias, loaded.run_id, predictor.path,
            time.perf_counter() - started, f"; replaced version {current.version}" if current else "",
        )  # fmt: skip
        _warn_if_uncompiled(loaded.version, model, predictor)
        return "swapped"

    def _load_failed(self, ref: VersionRef, current: LoadedModel | None, exc: Exception) -> str:
        reason = f"version {ref.version} failed to load: {_short(exc)}"
        self._metrics.model_load_failures.labels(reason=type(exc).__name__).inc()
        self._metrics.model_checks.labels(outcome="load_failed").inc()
        self.last_error = reason
        if current is None:
            self.not_ready_reason = reason
        else:  # never label answers with an alias now on another version
            self._label_moved(current, ref.version, "failed to load")
        (log.warning if self._failed_version == ref.version else log.error)(
            "%s; %s", reason, f"still serving version {current.version}" if current else "not ready"
        )
        self._failed_version = ref.version
        return "load_failed"

    def _label_moved(self, current: LoadedModel, version: str, what: str) -> None:
        """The alias names ``version`` now: answers of ``current`` lose the alias (registry_status alias_moved)."""
        assert self._source is not None
        alias = self._source.alias
        message = (
            f"the registry names version {version} `{alias}`, which {what}; version {current.version}, no longer "
            f"`{alias}`, is still served"
        )
        self._publish(replace(current, alias=None, registry_status=ALIAS_MOVED, registry_message=message))

    def _proven(self, model: Any, version: str) -> Predictor:
        """The fast path of ``model`` if it builds and agrees with the pipeline on the check rows (once per
        load, never per request); otherwise the pipeline path, counted and logged."""
        assert self._source is not None
        try:
            predictor = self._source.predictor(model)
            if predictor.path == "pipeline":
                return predictor
            check = check_fast_path(predictor, fast_path_rows())
        except Exception as exc:
            return self._pipeline_instead(model, version, f"the fast path failed to build or run: {_short(exc)}")
        if check.agrees:
            return predictor
        return self._pipeline_instead(
            model,
            version,
            f"the {predictor.path} fast path differs from the pipeline on {len(check.mismatched_rows)} of "
            f"{check.rows} check rows (rows {check.mismatched_rows[:20]}; max difference "
            f"{check.max_difference:.3g} > {FAST_PATH_TOLERANCE:.0e})",
        )

    def _pipeline_instead(self, model: Any, version: str, reason: str) -> Predictor:
        self._metrics.fast_path_mismatches.inc()
        log.error("version %s: %s; serving the pipeline path instead", version, reason)
        return PipelinePredictor(model, fallback_reason=reason, threads=getattr(self._source, "threads", None))

    def _publish(self, model: LoadedModel) -> None:
        """Make ``model`` the served one (one reference assignment) and update the model metrics."""
        self.current = model
        m = self._metrics
        m.model_info.clear()
        m.model_info.labels(model.name, model.version, model.alias or "", model.run_id).set(1)
        m.model_loaded.set(1)
        m.model_version.set(float(model.version) if model.version.isdigit() else 0)
        m.model_alias_current.set(1 if model.registry_status == REGISTRY_OK else 0)
        m.pipeline_fallback.set(1 if getattr(model.predictor, "fallback_reason", None) else 0)
        for path in PREDICTION_PATHS:
            m.prediction_path.labels(path).set(1 if path == model.predictor.path else 0)
        for status in REGISTRY_STATUSES:
            m.model_registry_status.labels(status).set(1 if status == model.registry_status else 0)

    def _poll(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self.check()
            if self.current is None:
                wait, backoff = backoff, min(backoff * 2, self._retry_max)
            else:
                wait, backoff = self._poll_interval, 1.0
            self._stop.wait(wait)
