"""MLflow model registry: the `champion` gate, the `challenger` alias, rollback and listing.

Moving an alias is one registry call, so clients resolving ``models:/diabetes-readmission@champion``
see the old version or the new one, never anything in between.

The gate fails closed: only the registry's own "does not exist" answer (error code
``RESOURCE_DOES_NOT_EXIST``) means "no champion yet"; any other failure (a 5xx, a network error, a
timeout) raises ``RegistryUnavailableError`` and nothing is promoted, so the caller (an Airflow task with
retries, or the CLI) fails and can run again. The gate is idempotent: its decision tag is written last,
after the alias move, so a gate killed anywhere leaves a version without a decision, which the next run
gates again (``gated``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from readmission.errors import ReadmissionError, access_advice, short_reason
from readmission.names import CHALLENGER, CHAMPION, DECISION_TAG, EXPERIMENT_NAME, MODEL_NAME, SELECTION_METRIC

__all__ = ["CHALLENGER", "CHAMPION", "EXPERIMENT_NAME", "MODEL_NAME", "SELECTION_METRIC"]

PROMOTED = "promoted"
KEPT = "kept previous champion"
# An operator's re-gate marks the old decision void before anything else (overwriting, not deleting the tag:
# the trainer's MLflow user may edit versions but not delete anything, README "Security").
REGATING = "re-gating"


class RegistryError(ReadmissionError):
    """The registry does not hold what a command needs."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be read or written (server error, network, timeout); the message says whether
    `champion` had already been moved when it failed."""


def is_not_found(exc: MlflowException) -> bool:
    """Whether ``exc`` is the registry saying that a model, version or alias does not exist."""
    return bool(exc.error_code == "RESOURCE_DOES_NOT_EXIST")


def is_forbidden(exc: BaseException | None) -> bool:
    """Whether ``exc`` is MLflow refusing the signed-in user a permission (HTTP 403)."""
    return getattr(exc, "error_code", None) == "PERMISSION_DENIED"


def unavailable_error(
    what: str, client: MlflowClient, exc: MlflowException, moved_to: str | None = None
) -> RegistryUnavailableError:
    """The error for a failed registry call (``what``: the call, in words); ``moved_to``: the version `champion`
    was already moved to. Names the registry, says whether `champion` moved, and what to do."""
    where = getattr(client, "_registry_uri", None) or "the configured registry"
    first = short_reason(exc)
    state = (
        "`champion` was not moved"
        if moved_to is None
        else f"`champion` already points at version {moved_to}, but the step did not finish recording it"
    )
    advice = access_advice(exc, os.environ.get("MLFLOW_TRACKING_USERNAME")) or (
        "Check that the MLflow server is up and run the step again (an Airflow task retries by itself)"
    )
    return RegistryUnavailableError(
        f"could not {what} at the MLflow registry {where} ({exc.error_code}: {first}); {state}. {advice}."
    )


def quote_filter_value(value: str) -> str:
    """``value`` quoted for an MLflow search filter (``tags.key = <this>``).

    MLflow strips the outer quotes and unescapes nothing, so a value with a single quote is put in double
    quotes; a value holding both quote characters cannot be expressed and raises ``ValueError``.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters and cannot be searched for in MLflow")


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate became champion, and why."""

    promoted: bool
    candidate_version: str
    previous_champion: str | None
    candidate_score: float
    champion_score: float | None
    reason: str


def alias_version(client: MlflowClient, alias: str, name: str = MODEL_NAME) -> str | None:
    """Version number ``alias`` points at, or None if the registry says there is none.

    Reads the registered model's aliases (MLflow answers a missing alias with the same error code as a bad
    argument, so the alias is looked up in the model rather than inferred from an error). Raises
    ``RegistryUnavailableError`` for any failure other than "model not registered": an outage is never read
    as "no such alias".
    """
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise unavailable_error(f"read the `{alias}` alias of {name!r}", client, exc) from exc
    version = (model.aliases or {}).get(alias)
    return None if version is None else str(version)


def champion_version(client: MlflowClient, name: str = MODEL_NAME) -> str | None:
    """Version number the `champion` alias points at, or None (see ``alias_version``)."""
    return alias_version(client, CHAMPION, name)


def _compare(
    candidate_score: float, previous: str | None, champion_score: float | None, min_improvement: float
) -> tuple[bool, str]:
    """The gate's rule: promote when there is no champion, or when the candidate beats it by more than
    ``min_improvement`` on the same test split."""
    if previous is None or champion_score is None:
        return True, "no champion yet"
    if candidate_score > champion_score + min_improvement:
        return True, f"{SELECTION_METRIC} {candidate_score:.4f} beats champion v{previous} ({champion_score:.4f})"
    margin = f" + {min_improvement}" if min_improvement else ""
    return False, (
        f"{SELECTION_METRIC} {candidate_score:.4f} does not beat champion v{previous} ({champion_score:.4f}"
        f"{margin}) on the same test split"
    )


def gated(client: MlflowClient, version: str, name: str = MODEL_NAME) -> bool:
    """Whether the gate has decided on ``version`` (its decision tag is written last)."""
    try:
        return (client.get_model_version(name, version).tags or {}).get(DECISION_TAG) in (PROMOTED, KEPT)
    except MlflowException as exc:
        raise unavailable_error(f"read version {version} of {name!r}", client, exc) from exc


def _recorded(client: MlflowClient, version: str, name: str) -> GateDecision:
    """The decision a gate wrote on ``version`` (tags): its decision tag, or, for a gate stopped after moving
    `champion`, the decision its reason tags record."""
    tags = client.get_model_version(name, version).tags or {}
    if tags.get(DECISION_TAG) in (PROMOTED, KEPT):
        promoted = tags[DECISION_TAG] == PROMOTED
    else:
        promoted = tags.get("promotion.would_promote", "True") == "True"

    def number(key: str) -> float | None:
        value = tags.get(key, "none")
        return None if value == "none" else float(value)

    previous = tags.get("promotion.previous_champion", "none")
    return GateDecision(
        promoted,
        version,
        None if previous == "none" else previous,
        _or_nan(number(f"promotion.candidate_test_{SELECTION_METRIC}")),
        number(f"promotion.champion_test_{SELECTION_METRIC}"),
        tags.get("promotion.reason", "already champion when the gate ran"),
    )


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def promote_if_better(
    client: MlflowClient,
    candidate_version: str,
    candidate_score: float,
    score_champion: Callable[[str], float],
    *,
    name: str = MODEL_NAME,
    min_improvement: float = 0.0,
    again: bool = False,
) -> GateDecision:
    """Set `challenger` on the candidate; move `champion` to it only if it beats the current champion.

    ``score_champion(version)`` evaluates the current champion on the SAME test split as the candidate,
    so the comparison stays fair when the data has grown since the champion was trained. A version the
    gate already decided on is not gated again (its recorded decision is returned) unless ``again`` (an
    operator's `readmission promote`). Order of the writes:
    `challenger`, the reason tags, `champion` (when promoted), the decision tag; a gate stopped between
    any two leaves no decision tag, and running it again finishes the job. Raises
    ``RegistryUnavailableError`` when the registry cannot be read or written. With ``again`` the old decision
    tag is first overwritten with ``REGATING`` (void), so a re-gate stopped midway is finished by the next run
    like any other.
    """
    moved = False
    try:
        if gated(client, candidate_version, name):
            if not again:
                return _recorded(client, candidate_version, name)
            client.set_model_version_tag(name, candidate_version, DECISION_TAG, REGATING)
        client.set_registered_model_alias(name, CHALLENGER, candidate_version)
        previous = champion_version(client, name)
        moved = previous == candidate_version  # a run stopped after its alias move: `champion` is already here
        if previous == candidate_version and again:  # an operator re-gates the champion itself
            decision = GateDecision(True, candidate_version, previous, candidate_score, None, "already champion")
            _write_reason(client, decision, name)
        elif previous == candidate_version:  # a gate stopped after its alias move: finish what it decided
            decision = _recorded(client, candidate_version, name)
        else:
            champion_score = score_champion(previous) if previous is not None else None
            promoted, reason = _compare(candidate_score, previous, champion_score, min_improvement)
            decision = GateDecision(promoted, candidate_version, previous, candidate_score, champion_score, reason)
            _write_reason(client, decision, name)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, candidate_version)
            moved = True
        client.set_model_version_tag(name, candidate_version, DECISION_TAG, PROMOTED if decision.promoted else KEPT)
    except MlflowException as exc:
        where = candidate_version if moved else None
        raise unavailable_error(f"gate version {candidate_version} of {name!r}", client, exc, where) from exc
    return decision


def _write_reason(client: MlflowClient, decision: GateDecision, name: str) -> None:
    """The gate's evidence as version tags (everything but the decision itself, which is written last)."""
    tags = {
        "promotion.reason": decision.reason,
        "promotion.would_promote": str(decision.promoted),
        "promotion.previous_champion": decision.previous_champion or "none",
        f"promotion.candidate_test_{SELECTION_METRIC}": f"{decision.candidate_score:.6f}",
        f"promotion.champion_test_{SELECTION_METRIC}": "none"
        if decision.champion_score is None
        else f"{decision.champion_score:.6f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.candidate_version, key, value)


def existing_version(client: MlflowClient, version: str, name: str = MODEL_NAME) -> str:
    """``version`` as the registry spells it (``"07"`` -> ``"7"``), once the registry confirms it exists.

    Raises ``RegistryError`` naming the known versions when ``version`` is not a number or not registered,
    and ``RegistryUnavailableError`` when the registry cannot be read (an outage is never read as "no such
    version").
    """
    text = version.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise RegistryError(f"versions of {name!r} are numbers (`readmission models` lists them), not {version!r}")
    text = str(int(text))
    try:
        client.get_model_version(name, text)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise unavailable_error(f"read version {text} of {name!r}", client, exc) from exc
        known = ", ".join(sorted((v.version for v in list_versions(client, name)), key=int))
        raise RegistryError(
            f"model {name!r} has no version {text} (known versions: {known or 'none'}); "
            "`readmission models` lists them."
        ) from None
    return text


def rollback(
    client: MlflowClient, version: str, *, name: str = MODEL_NAME, reason: str = "manual rollback"
) -> str | None:
    """Point `champion` at an existing ``version``; returns the version it pointed at before.

    Raises ``RegistryError`` naming the known versions when ``version`` does not exist, and
    ``RegistryUnavailableError`` when the registry cannot be read or written (nothing changed).
    """
    version = existing_version(client, version, name)
    previous = champion_version(client, name)
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except MlflowException as exc:
        raise unavailable_error(f"move `{CHAMPION}` of {name!r} to version {version}", client, exc) from exc
    try:
        client.set_model_version_tag(name, version, "rollback.reason", f"{reason} (champion was v{previous})")
    except MlflowException as exc:
        raise unavailable_error(f"tag version {version} of {name!r} with the rollback", client, exc, version) from exc
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
    """All versions of the model, newest first, with aliases and test metrics ([] when it is not registered).

    Raises ``RegistryUnavailableError`` when the registry cannot be read.
    """
    try:
        versions = client.search_model_versions(f"name={quote_filter_value(name)}")
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            return []
        raise unavailable_error(f"list the versions of {name!r}", client, exc) from exc
    aliases: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
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
                tags.get(DECISION_TAG, ""),
            )
        )
    return summaries
