"""Explanations in the API: the query parameters that ask for them, the proof at load, the answer's block.

``POST /predict?explain=true`` (and ``/predict/batch``) adds to each prediction the top contributions to the
30-day risk (``readmission.explanation``), ``explain_top`` of them (default ``DEFAULT_TOP``), and the sum of
the others, so that ``base_value + sum(contributions) + other_features.contribution == value``. Without the
parameter nothing here runs: the prediction path is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi.concurrency import run_in_threadpool

from inference_api.contract import InvalidBodyError
from inference_api.model_manager import LoadedModel
from readmission.explanation import Explainer, describe, feature_values
from readmission.serving import Row

log = logging.getLogger("inference_api")

DEFAULT_TOP = 10  # contributions listed per prediction unless explain_top says otherwise
MAX_TOP = 100  # the largest explain_top accepted (the models have 56 features: all are then listed)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")  # as OpenAPI/pydantic booleans read


EXPLAIN_MAX_ROWS = 100  # encounters one explained request may hold: a boosted row costs ~2-3 ms, a forest's far more


class ExplanationsBusyError(Exception):
    """Another explanation held the explainer longer than this request may wait (503, Retry-After)."""


class ExplainLimiter:
    """One explanation computed at a time, in a worker thread: TreeSHAP holds a core for its whole batch, and
    on the two cores a replica has the other one keeps serving plain predictions (whose path never waits
    here). A request waits at most ``wait_seconds`` (PREDICT_TIMEOUT_SECONDS) for its turn, then gets
    ``ExplanationsBusyError``."""

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self._turn = asyncio.Semaphore(1)

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` in a worker thread once it is this request's turn."""
        try:
            async with asyncio.timeout(self.wait_seconds):  # a cancelled acquire() gives its turn back
                await self._turn.acquire()
        except TimeoutError:
            raise ExplanationsBusyError(
                f"other explanations kept the explainer busy for {self.wait_seconds:g} s "
                "(PREDICT_TIMEOUT_SECONDS); try again shortly, or ask without explain=true"
            ) from None
        try:
            return await run_in_threadpool(work, *args)
        finally:
            self._turn.release()


def check_rows(count: int) -> None:
    """Refuse (422, naming ``explain``) an explained request of more than ``EXPLAIN_MAX_ROWS`` encounters."""
    if count > EXPLAIN_MAX_ROWS:
        message = (
            f"explanations are computed for at most {EXPLAIN_MAX_ROWS} encounters per request and this one has "
            f"{count:,}: split the batch, or ask without explain=true"
        )
        raise InvalidBodyError([{"field": "explain", "message": message}])


class NotExplainableModelError(Exception):
    """Explanations were asked of a served model that has none (409); the message says why and what to do."""


def check_explainable(model: LoadedModel) -> Explainer:
    """The served model's explainer; ``NotExplainableModelError`` naming the version and the reason if none."""
    if model.explainer is None:
        raise NotExplainableModelError(
            f"version {model.version} of {model.name} is served without explanations ({model.explain_problem}); "
            "ask again without explain=true, or train and promote a new version"
        )
    return model.explainer


@dataclass(frozen=True)
class ExplainRequest:
    """What the query string asked: ``top`` contributions per prediction, or no explanation (None)."""

    top: int | None


NO_EXPLANATION = ExplainRequest(None)


def _flag(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InvalidBodyError([{"field": "explain", "message": f"{text[:40]!r} is not allowed: send true or false"}])


def _parameters(query_string: bytes) -> dict[str, str]:
    """The query's explain parameters; ``InvalidBodyError`` naming one that is given twice (which one counts
    is a guess no client should depend on)."""
    pairs = [(k, v) for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True) if k in _NAMES]
    names = [k for k, _ in pairs]
    if twice := sorted({k for k in names if names.count(k) > 1}):
        raise InvalidBodyError([{"field": k, "message": "given more than once: send it once"} for k in twice])
    return dict(pairs)


_NAMES = ("explain", "explain_top")


def parse_explain(query_string: bytes) -> ExplainRequest:
    """``explain`` (true/false, 1/0, yes/no, on/off; default false) and ``explain_top`` (1 to ``MAX_TOP``; all
    the model's features are listed when it has fewer; read only with explain=true) of a raw query string. Raises
    ``InvalidBodyError`` (422) naming the bad parameter: another value, an empty one, one given twice.
    Other parameters are ignored, as before."""
    if not query_string:
        return NO_EXPLANATION
    params = _parameters(query_string)
    explain = _flag(params.get("explain", "false"))
    top = params.get("explain_top", str(DEFAULT_TOP))  # checked even alone, as the OpenAPI document says
    if not (top.isascii() and top.isdigit()) or not 1 <= int(top) <= MAX_TOP:  # '²' is a digit int() refuses
        message = f"{top[:40]!r} is not allowed: send a whole number from 1 to {MAX_TOP}"
        raise InvalidBodyError([{"field": "explain_top", "message": message, "minimum": 1, "maximum": MAX_TOP}])
    return ExplainRequest(int(top)) if explain else NO_EXPLANATION


def _direction(contribution: float) -> str:
    return "raises the risk" if contribution > 0 else "lowers the risk" if contribution < 0 else "no effect"


def explanation_blocks(explainer: Explainer, rows: Sequence[Row], top: int) -> list[dict[str, Any]]:
    """The ``explanation`` block of each row's answer (``contract.Explanation``): computed for all features,
    the ``top`` largest by absolute contribution listed, the rest summed."""
    explained = explainer.explain(rows)
    values = feature_values(explained.features, rows)
    blocks = []
    for i, contributions in enumerate(explained.contributions.tolist()):
        order = sorted(range(len(contributions)), key=lambda j: -abs(contributions[j]))
        listed = [
            {
                "feature": explained.features[j],
                "description": describe(explained.features[j]),
                "value": values[i][explained.features[j]],
                "contribution": contributions[j],
                "direction": _direction(contributions[j]),
            }
            for j in order[:top]
        ]
        rest = [contributions[j] for j in order[top:]]
        blocks.append(
            {
                "scale": explained.scale,
                "base_value": explained.base_value,
                "value": float(explained.values[i]),
                "calibrated": explained.calibrated,
                "explained_risk": float(explained.risks[i]),
                "contributions": listed,
                "other_features": {"count": len(rest), "contribution": float(sum(rest))},
            }
        )
    return blocks


EXPLAIN_PARAMETERS: list[dict[str, Any]] = [  # the OpenAPI description of the query parameters read above
    {
        "name": "explain",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Add each prediction's `explanation`: exact contributions to the 30-day risk (off by default; "
        "answered 409 not_explainable when the served model has none).",
    },
    {
        "name": "explain_top",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP, "default": DEFAULT_TOP},
        "description": "How many contributions to list, largest first; the others are summed in `other_features`.",
    },
]


# The OpenAPI example of an explained answer: "Heart failure, first visit" scored by a champion trained by
# `make run` on the full data (2026-12-01), explain_top=3.
EXPLAINED_EXAMPLE: dict[str, Any] = {
    "request_id": "3f0c5e1a9b7d4c2e8a6f1b0d2c4e6a8b",
    "model": {"name": "diabetes-readmission", "version": "1", "alias": "champion"},
    "predicted_class": "NO",
    "probabilities": {"NO": 0.5777, ">30": 0.3357, "<30": 0.0867},
    "risk_30_days": 0.0867,
    "risk_band": "low",
    "explanation": {
        "scale": "log-odds",
        "base_value": -2.2243,
        "value": -2.3551,
        "calibrated": False,
        "contributions": [
            {
                "feature": "diag_1",
                "description": "Primary diagnosis (ICD-9)",
                "value": "428",
                "contribution": 0.2642,
                "direction": "raises the risk",
            },
            {
                "feature": "discharge_disposition_id",
                "description": "Where the patient went after discharge",
                "value": 1,
                "contribution": -0.1437,
                "direction": "lowers the risk",
            },
            {
                "feature": "previous_number_inpatient",
                "description": "Inpatient visits in the year before the patient's previous encounter (0 for a "
                "first visit)",
                "value": 0,
                "contribution": -0.1197,
                "direction": "lowers the risk",
            },
        ],
        "other_features": {"count": 53, "contribution": -0.1316},
    },
}
