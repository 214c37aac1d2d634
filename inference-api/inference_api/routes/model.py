"""GET /model (the served version) and POST /model/reload (check the registry alias now)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api.batcher import ModelNotReadyError
from inference_api.contract import ErrorBody, ModelInfo
from inference_api.deps import ComponentsDep
from inference_api.errors import ERROR_RESPONSES

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses={503: ERROR_RESPONSES[503]})
async def model_info(parts: ComponentsDep) -> ModelInfo:
    """The served version, its run, training metrics and when it was loaded."""
    model = parts.manager.current
    if model is None:
        raise ModelNotReadyError(parts.manager.not_ready_reason)
    return ModelInfo(
        name=model.name,
        version=model.version,
        alias=model.alias,
        registry_status=model.registry_status,
        registry_message=model.registry_message,
        run_id=model.run_id,
        loaded_at=model.loaded_at,
        prediction_path=model.predictor.path,
        metrics=model.metrics,
    )


@router.post("/model/reload", responses={401: {"model": ErrorBody}})
async def reload(request: Request, parts: ComponentsDep) -> dict[str, Any]:
    """Check the registry alias now and swap if it moved (needs `Authorization: Bearer <RELOAD_TOKEN>` when set)."""
    token = parts.settings.reload_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value()
        # The scheme is case-insensitive (RFC 9110 11.1); the token is compared in constant time.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
            raise StarletteHTTPException(
                401, "a valid reload token is required (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"}
            )
    manager = parts.manager
    outcome = await run_in_threadpool(manager.check)
    model = manager.current
    return {"outcome": outcome, "version": model.version if model else None, "last_error": manager.last_error}
