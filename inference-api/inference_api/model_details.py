"""What the Model tab shows about the served model, read from MLflow with the service's read-only user: the
registry's version history (with the promotion gate's decisions) and the evidence training logged to the serving
version's run (plots, global feature importance).

A run's artifacts never change, so each one is downloaded once per (run id, artifact) and kept in memory
(``ArtifactCache``); the history is read on each call (the registry moves). Every MLflow failure other than
"does not exist" becomes ``RegistryUnreachableError`` (502), never a guess.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference_api.contract import FeatureImportance, ModelImportance, ModelVersionInfo
from inference_api.model_manager import SERVICE_ROLE, LoadedModel
from readmission.names import DECISION_TAG, IMPORTANCE_ARTIFACT, PLOT_FILES, PLOTS_FOLDER, SELECTION_METRIC

PLOT_NAMES = tuple(PLOT_FILES)  # the allow-list of GET /model/plots/{name}
IMPORTANCE_MEASURE = "mean drop in ROC-AUC of the 30-day risk when the input is shuffled (test split)"


class RegistryUnreachableError(Exception):
    """MLflow could not be read (down, timed out, or it refused the service's user): 502."""


class UnknownPlotError(LookupError):
    """A plot name outside the allow-list: 404 naming the allowed names."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no plot {name[:80]!r}; the plots are: {', '.join(PLOT_NAMES)}")
        self.name = name


class ArtifactMissingError(LookupError):
    """The serving version's run did not log this artifact (a run older than it): 404 naming what it has."""


def unreachable(what: str, exc: BaseException) -> RegistryUnreachableError:
    """The 502 error for a failed MLflow call (``what``: the call, in words), with the access advice on 401/403."""
    from readmission.errors import access_advice, short_reason

    advice = access_advice(exc, os.environ.get("MLFLOW_TRACKING_USERNAME"), SERVICE_ROLE)
    message = f"MLflow could not {what}: {short_reason(exc)}" + (f"; {advice}" if advice else "")
    return RegistryUnreachableError(message + ". The model keeps serving; try again later.")


def _tag_number(tags: dict[str, str], key: str) -> float | None:
    value = tags.get(key)
    try:
        return None if value is None or value == "none" else float(value)
    except ValueError:
        return None


def version_info(version: Any, aliases: list[str], serving: str | None) -> ModelVersionInfo:
    """One MLflow ``ModelVersion`` as the API describes it (the gate's evidence from its tags)."""
    tags: dict[str, str] = dict(version.tags or {})
    previous = tags.get("promotion.previous_champion")
    return ModelVersionInfo(
        version=str(version.version),
        created_at=datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, UTC),
        run_id=version.run_id or "",
        family=tags.get("model_family"),
        aliases=sorted(aliases),
        serving=str(version.version) == serving,
        decision=tags.get(DECISION_TAG),
        reason=tags.get("promotion.reason"),
        previous_champion=None if previous in (None, "none") else previous,
        selection_metric=SELECTION_METRIC,
        candidate_score=_tag_number(tags, f"promotion.candidate_test_{SELECTION_METRIC}"),
        champion_score=_tag_number(tags, f"promotion.champion_test_{SELECTION_METRIC}"),
        rollback_reason=tags.get("rollback.reason"),
    )


def version_history(client: Any, name: str, serving: str | None) -> list[ModelVersionInfo]:
    """Every registered version of ``name``, newest first ([] when the model is not registered).

    Raises ``RegistryUnreachableError`` when the registry cannot be read.
    """
    from mlflow.exceptions import MlflowException

    from readmission.registry import is_not_found, quote_filter_value

    try:
        versions = client.search_model_versions(f"name={quote_filter_value(name)}")
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            return []
        raise unreachable(f"list the versions of {name!r}", exc) from exc
    except Exception as exc:  # a non-MLflow error on the way (connection, file store): an outage all the same
        raise unreachable(f"list the versions of {name!r}", exc) from exc
    aliases: dict[str, list[str]] = {}
    for alias, number in (registered.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    ordered = sorted(versions, key=lambda v: int(v.version), reverse=True)
    return [version_info(v, aliases.get(str(v.version), []), serving) for v in ordered]


def plot_path(name: str) -> str:
    """The artifact path of plot ``name``; ``UnknownPlotError`` outside the allow-list (no path from the caller
    ever reaches MLflow)."""
    if name not in PLOT_FILES:
        raise UnknownPlotError(name)
    return f"{PLOTS_FOLDER}/{PLOT_FILES[name]}"


class ArtifactCache:
    """Artifacts of runs, downloaded once per (run id, path) and kept (at most ``max_entries``, oldest dropped).

    ``read(client, run_id, path)`` answers bytes; ``ArtifactMissingError`` when the run did not log ``path``;
    ``RegistryUnreachableError`` when MLflow cannot be read (nothing cached then: the next call tries again).
    """

    def __init__(self, max_entries: int = 64) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._files: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._listings: OrderedDict[str, frozenset[str]] = OrderedDict()

    def _remember(self, store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            store[key] = value
            while len(store) > self._max:
                store.popitem(last=False)

    def listing(self, client: Any, run_id: str) -> frozenset[str]:
        """The paths of the run's top-level artifacts and of its plots folder."""
        with self._lock:
            known = self._listings.get(run_id)
        if known is not None:
            return known
        try:
            files = [*client.list_artifacts(run_id), *client.list_artifacts(run_id, PLOTS_FOLDER)]
        except Exception as exc:
            raise unreachable(f"list the artifacts of run {run_id}", exc) from exc
        paths = frozenset(f.path for f in files if not f.is_dir)
        self._remember(self._listings, run_id, paths)
        return paths

    def read(self, client: Any, run_id: str, path: str) -> bytes:
        with self._lock:
            cached = self._files.get((run_id, path))
        if cached is not None:
            return cached
        if path not in self.listing(client, run_id):
            raise ArtifactMissingError(path)
        try:
            with tempfile.TemporaryDirectory(prefix="model-artifact-") as folder:
                content = Path(client.download_artifacts(run_id, path, folder)).read_bytes()
        except Exception as exc:
            raise unreachable(f"download {path} of run {run_id}", exc) from exc
        self._remember(self._files, (run_id, path), content)
        return content


def plot_availability(cache: ArtifactCache, client: Any, model: LoadedModel) -> dict[str, bool]:
    """Each allowed plot name: whether the serving version's run logged it."""
    logged = cache.listing(client, model.run_id)
    return {name: plot_path(name) in logged for name in PLOT_NAMES}


def missing_plot_message(name: str, model: LoadedModel, available: dict[str, bool]) -> str:
    """The 404 message for a plot the serving run did not log, naming the ones it has."""
    has = [n for n, logged in available.items() if logged]
    return (
        f"the run of version {model.version} ({model.run_id}) did not log the {name} plot (trained before it was "
        f"logged); it has: {', '.join(has) or 'no plots'}"
    )


def importance(cache: ArtifactCache, client: Any, model: LoadedModel) -> ModelImportance:
    """The serving run's global feature importance, largest first (``ArtifactMissingError`` when not logged)."""
    values: dict[str, float] = json.loads(cache.read(client, model.run_id, IMPORTANCE_ARTIFACT))
    ranked = sorted(values.items(), key=lambda item: float(item[1]), reverse=True)
    return ModelImportance(
        version=model.version,
        run_id=model.run_id,
        measure=IMPORTANCE_MEASURE,
        features=[FeatureImportance(feature=k, importance=float(v)) for k, v in ranked],
    )
