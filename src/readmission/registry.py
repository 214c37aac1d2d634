"""MLflow model registry: the `champion` gate, the `challenger` alias, rollback and listing.

Moving an alias is one registry call, so clients resolving ``models:/diabetes-readmission@champion``
see the old version or the new one, never anything in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from readmission.errors import ReadmissionError
from readmission.names import CHALLENGER, CHAMPION, EXPERIMENT_NAME, MODEL_NAME, SELECTION_METRIC

__all__ = ["CHALLENGER", "CHAMPION", "EXPERIMENT_NAME", "MODEL_NAME", "SELECTION_METRIC"]


class RegistryError(ReadmissionError):
    """The registry does not hold what a command needs."""


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate became champion, and why."""

    promoted: bool
    candidate_version: str
    previous_champion: str | None
    candidate_score: float
    champion_score: float | None
    reason: str


def champion_version(client: MlflowClient, name: str = MODEL_NAME) -> str | None:
    """Version number the `champion` alias points at, or None if there is none yet."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def promote_if_better(
    client: MlflowClient,
    candidate_version: str,
    candidate_score: float,
    score_champion: Callable[[str], float],
    *,
    name: str = MODEL_NAME,
    min_improvement: float = 0.0,
) -> GateDecision:
    """Set `challenger` on the candidate; move `champion` to it only if it beats the current champion.

    ``score_champion(version)`` evaluates the current champion on the SAME test split as the candidate,
    so the comparison stays fair when the data has grown since the champion was trained.
    """
    client.set_registered_model_alias(name, CHALLENGER, candidate_version)
    previous = champion_version(client, name)
    champion_score = score_champion(previous) if previous is not None else None
    if champion_score is None:
        promoted, reason = True, "no champion yet"
    elif candidate_score > champion_score + min_improvement:
        promoted = True
        reason = f"{SELECTION_METRIC} {candidate_score:.4f} beats champion v{previous} ({champion_score:.4f})"
    else:
        promoted = False
        reason = (
            f"{SELECTION_METRIC} {candidate_score:.4f} does not beat champion v{previous} ({champion_score:.4f}"
            f"{f' + {min_improvement}' if min_improvement else ''}) on the same test split"
        )
    tags = {
        "promotion.decision": "promoted" if promoted else "kept previous champion",
        "promotion.reason": reason,
        "promotion.previous_champion": previous or "none",
        f"promotion.candidate_test_{SELECTION_METRIC}": f"{candidate_score:.6f}",
        f"promotion.champion_test_{SELECTION_METRIC}": "none" if champion_score is None else f"{champion_score:.6f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate_version, key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate_version)
    return GateDecision(promoted, candidate_version, previous, candidate_score, champion_score, reason)


def rollback(
    client: MlflowClient, version: str, *, name: str = MODEL_NAME, reason: str = "manual rollback"
) -> str | None:
    """Point `champion` at an existing ``version``; returns the version it pointed at before."""
    try:
        client.get_model_version(name, version)
    except MlflowException:
        known = ", ".join(sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int))
        raise RegistryError(
            f"model {name!r} has no version {version} (known versions: {known or 'none'}); "
            "`readmission models` lists them."
        ) from None
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "rollback.reason", f"{reason} (champion was v{previous})")
    return previous


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as `readmission models` shows it."""

    version: str
    aliases: tuple[str, ...]
    run_id: str
    family: str
    metrics: dict[str, float]
    decision: str


def list_versions(client: MlflowClient, name: str = MODEL_NAME) -> list[VersionSummary]:
    """All versions of the model, newest first, with aliases and test metrics."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise RegistryError(f"could not read the registry: {exc}") from exc
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException:
        return []
    summaries = []
    for v in sorted(versions, key=lambda mv: int(mv.version), reverse=True):
        tags: dict[str, Any] = dict(v.tags or {})
        metrics = {k.removeprefix("test_"): float(val) for k, val in tags.items() if k.startswith("test_")}
        summaries.append(
            VersionSummary(
                str(v.version),
                tuple(sorted(aliases.get(str(v.version), []))),
                v.run_id or "",
                tags.get("model_family", "?"),
                metrics,
                tags.get("promotion.decision", ""),
            )
        )
    return summaries
