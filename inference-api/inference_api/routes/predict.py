"""POST /predict and POST /predict/batch: score encounters with the served model and log every answer.

The bodies are read as raw bytes and validated in one pass (``contract.parse_body``); the OpenAPI document
still describes them (``openapi_extra``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from inference_api.batcher import ModelNotReadyError
from inference_api.components import Components
from inference_api.contract import (
    BatchPrediction,
    Prediction,
    check_eligible,
    model_ref,
    parse_batch,
    parse_body,
    request_body,
)
from inference_api.errors import ERROR_RESPONSES, FastJSONResponse, UnsupportedMediaTypeError, request_id
from inference_api.explaining import (
    EXPLAIN_PARAMETERS,
    EXPLAINED_EXAMPLE,
    ExplainRequest,
    check_explainable,
    check_rows,
    explanation_blocks,
    parse_explain,
)
from inference_api.ids import new_id
from inference_api.model_manager import LoadedModel
from readmission import schema

router = APIRouter(tags=["predict"])

_EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.items())


OFF_LOOP_BYTES = 16 * 1024  # a /predict body larger than this (an encounter is ~1.5 KB) is checked off the loop
OFF_LOOP_BATCH_BYTES = 512 * 1024  # a /predict/batch body larger than this (~340 encounters) is checked off the loop
OFF_LOOP_BATCH_OBJECTS = 256  # ... and one holding more JSON objects than this, however small
_JSON_TYPES = ("application/json",)


def _parts(request: Request) -> Components:
    """The app's parts, read directly: on the prediction path a FastAPI dependency (``deps.ComponentsDep``,
    as the other routes use) costs 9 us per request, 5 % of a request at 64 clients (measured in process)."""
    parts: Components = request.app.state.components
    return parts


def _check_media_type(request: Request) -> None:
    """Refuse (415) a compressed body or a declared Content-Type that is not JSON; none declared is taken as
    JSON."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported: send the JSON body uncompressed"
        )
    declared = request.headers.get("content-type")
    if declared is not None:
        media = declared.split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(f"Content-Type {media!r} is not JSON: send Content-Type: application/json")


def _band(risk: float, bands: tuple[float, float]) -> str:
    return "low" if risk < bands[0] else "medium" if risk < bands[1] else "high"


def scores_of(parts: Components, model: LoadedModel, probabilities: np.ndarray) -> list[dict[str, Any]]:
    """One ``Scores`` dict per row of ``probabilities`` (counted in the prediction metrics)."""
    bands, metrics = parts.bands, parts.metrics
    out = []
    for no, later, early in probabilities[:, model.class_columns].tolist():
        # The most probable class, the first one on a tie (as numpy's argmax).
        predicted = "NO" if no >= later and no >= early else ">30" if later >= early else "<30"
        metrics.observe_prediction(predicted, early)
        out.append(
            {
                "predicted_class": predicted,
                "probabilities": {"NO": no, ">30": later, "<30": early},
                "risk_30_days": early,
                "risk_band": _band(early, bands),
            }
        )
    return out


def model_rows(encounters: list[Any]) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The model's input rows of validated encounters, and the caller's encounter ids apart (never an input)."""
    rows = [e.model_dump() for e in encounters]
    return rows, [row.pop(schema.ENCOUNTER_ID) for row in rows]


def log_predictions(
    parts: Components,
    rid: str,
    started: float,
    endpoint: str,
    model: LoadedModel,
    rows: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    encounter_ids: list[int | None],
) -> None:
    """Queue one prediction-log row per scored encounter of request ``rid``, received at ``started``
    (``time.perf_counter()``)."""
    latency_ms = (time.perf_counter() - started) * 1000.0
    now = datetime.now(UTC)
    parts.prediction_log.submit(
        [
            {
                "log_id": new_id(),  # unique per row, even when a client reuses a request id
                "request_id": rid,
                "item": i,
                "created_at": now,
                "endpoint": endpoint,
                "model_name": model.name,
                "model_version": model.version,
                "inputs": row,
                "predicted_class": s["predicted_class"],
                "probability_no": s["probabilities"]["NO"],
                "probability_after_30": s["probabilities"][">30"],
                "probability_within_30": s["probabilities"]["<30"],
                "risk_band": s["risk_band"],
                "latency_ms": latency_ms,
                "encounter_id": encounter_id,
                **({"explanation": s["explanation"]} if "explanation" in s else {}),
            }
            for i, (row, s, encounter_id) in enumerate(zip(rows, scores, encounter_ids, strict=True))
        ]
    )


def _received(request: Request) -> tuple[str, float]:
    """The request's id and when the edge middleware received it (``time.perf_counter()``)."""
    return request_id(request), request.scope.get("state", {}).get("started", time.perf_counter())


def _asked(parts: Components, request: Request) -> ExplainRequest:
    """The query's explanation request, refused (409) at once when the served model has no explanations."""
    ask = parse_explain(request.scope["query_string"])
    if ask.top is not None and (current := parts.manager.current) is not None:
        check_explainable(current)
    return ask


async def _explain(
    parts: Components, model: LoadedModel, rows: list[dict[str, Any]], scores: list[dict[str, Any]], top: int
) -> None:
    """Add each row's ``explanation`` block to its scores (one explanation at a time, in a worker thread:
    ``ExplainLimiter``; TreeSHAP releases the GIL, the loop keeps answering)."""
    blocks = await parts.explain_limiter.run(explanation_blocks, check_explainable(model), rows, top)
    for score, block in zip(scores, blocks, strict=True):
        score["explanation"] = block


_EXPLAINED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"examples": {"explained": {"value": EXPLAINED_EXAMPLE}}}}}
}


@router.post(
    "/predict",
    response_model=Prediction,
    responses={**ERROR_RESPONSES, **_EXPLAINED},
    openapi_extra={
        **request_body("EncounterFeatures", {name: {"summary": name, "value": value} for name, value in _EXAMPLES}),
        "parameters": EXPLAIN_PARAMETERS,
    },
)
async def predict(request: Request) -> Response:
    """Score one encounter: predicted class, class probabilities, 30-day risk and its band; with
    `explain=true`, the top contributions to the 30-day risk (`explain_top`, default 10)."""
    parts = _parts(request)
    _check_media_type(request)
    ask = _asked(parts, request)
    raw = await request.body()
    if len(raw) > OFF_LOOP_BYTES:  # far larger than an encounter: whatever it holds, check it off the loop
        rows, encounter_ids = await run_in_threadpool(single_rows, raw)
    else:
        rows, encounter_ids = single_rows(raw)
    model, probabilities = await parts.batcher.predict(rows)
    scores = scores_of(parts, model, probabilities)
    if ask.top is not None:
        await _explain(parts, model, rows, scores, ask.top)
    rid, started = _received(request)
    return FastJSONResponse(single_answer(parts, rid, started, model, rows, scores, encounter_ids))


def single_rows(raw: bytes) -> tuple[list[dict[str, Any]], list[int | None]]:
    """``POST /predict``'s body as the model's one input row, and the caller's encounter id apart. Raises
    ``parse_body``'s errors and ``check_eligible``'s (the error map answers them)."""
    encounter = parse_body(raw, schema.EncounterFeatures)
    check_eligible([encounter])
    return model_rows([encounter])


def single_answer(
    parts: Components,
    rid: str,
    started: float,
    model: LoadedModel,
    rows: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    encounter_ids: list[int | None],
) -> dict[str, Any]:
    """Log ``POST /predict``'s prediction (``log_predictions``) and give its answer (``Prediction``)."""
    log_predictions(parts, rid, started, "predict", model, rows, scores, encounter_ids)
    return {"request_id": rid, "model": model_ref(model), **scores[0]}


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERROR_RESPONSES,
    openapi_extra={
        **request_body(
            "BatchRequest",
            {"three patients": {"summary": "The example patients", "value": {"encounters": [v for _, v in _EXAMPLES]}}},
        ),
        "parameters": EXPLAIN_PARAMETERS,
    },
)
async def predict_batch(request: Request) -> Response:
    """Score up to MAX_BATCH_SIZE encounters in one call (answers in request order); `explain=true` as for
    /predict."""
    parts = _parts(request)
    _check_media_type(request)
    ask = _asked(parts, request)
    raw = await request.body()
    limit = parts.settings.max_batch_size
    # A batch's cost grows with its objects, not its bytes (1,000 empty objects are 3 KB and 180 ms of
    # validation): one that may be costly goes to a worker thread, so the loop keeps answering the probes;
    # an ordinary one (100 encounters: about 2 ms) stays on the loop, cheaper than a thread hop.
    if len(raw) > OFF_LOOP_BATCH_BYTES or raw.count(b"{") > OFF_LOOP_BATCH_OBJECTS:
        body = await run_in_threadpool(parse_batch, raw, limit)
    else:
        body = parse_batch(raw, limit)
    if not body.encounters:
        current = parts.manager.current
        if current is None:
            raise ModelNotReadyError(parts.manager.not_ready_reason)
        return FastJSONResponse({"request_id": request_id(request), "model": model_ref(current), "predictions": []})
    check_eligible(body.encounters, "encounters")
    if ask.top is not None:
        check_rows(len(body.encounters))
    rows, encounter_ids = model_rows(body.encounters)
    model, probabilities = await parts.batcher.predict(rows, gather=False)
    scores = scores_of(parts, model, probabilities)
    if ask.top is not None:
        await _explain(parts, model, rows, scores, ask.top)
    rid, started = _received(request)
    log_predictions(parts, rid, started, "predict_batch", model, rows, scores, encounter_ids)
    return FastJSONResponse({"request_id": rid, "model": model_ref(model), "predictions": scores})
