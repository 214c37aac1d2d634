"""The one error map: every exception a request can raise becomes the same JSON body (``ErrorBody``).

``register_error_handlers(app)`` installs it; the endpoints only raise. Every answer carries the request id
the edge middleware gave the request (``X-Request-ID``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from inference_api.batcher import BatcherFailedError, ModelNotReadyError, PredictionTimeoutError
from inference_api.contract import MAX_LISTED_ERRORS, BatchTooLargeError, ErrorBody, InvalidBodyError
from inference_api.explaining import ExplanationsBusyError, NotExplainableModelError
from inference_api.ids import new_id
from inference_api.model_details import PLOT_NAMES, RegistryUnreachableError, UnknownPlotError
from inference_api.model_manager import LOADING, STARTING

log = logging.getLogger("inference_api")


class PayloadTooLargeError(Exception):
    """The body (or the batch) is larger than allowed (413)."""


class UnsupportedMediaTypeError(Exception):
    """The body is compressed or declared as something other than JSON (415)."""


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library on the hot path)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, error: str, message: str, request_id: str, **extra: Any) -> JSONResponse:
    """An ``ErrorBody`` answer with the ``X-Request-ID`` header."""
    body = {"error": error, "message": message, "request_id": request_id, **extra}
    return FastJSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


def request_id(request: Request) -> str:
    """The id the edge middleware gave this request (a fresh one if the middleware did not run)."""
    return str(request.scope.get("state", {}).get("request_id") or new_id())


# What the prediction endpoints document (OpenAPI ``responses``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body could not be read at all (not UTF-8 text)."},
    422: {"model": ErrorBody, "description": "Invalid input: each bad field with its allowed values or range."},
    503: {
        "model": ErrorBody,
        "description": "No model loaded yet (train and promote one), the batcher stopped, or (explain=true) other "
        "explanations kept the explainer busy past PREDICT_TIMEOUT_SECONDS.",
    },
    413: {"model": ErrorBody, "description": "Body or batch too large."},
    415: {"model": ErrorBody, "description": "A compressed body or a Content-Type that is not JSON."},
    409: {"model": ErrorBody, "description": "explain=true, but the served model is served without explanations."},
    500: {"model": ErrorBody, "description": "Unexpected error (the request id identifies it in the logs)."},
    504: {"model": ErrorBody, "description": "The model call took longer than PREDICT_TIMEOUT_SECONDS."},
}

_HTTP_ERRORS = {400: "malformed_body", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidBodyError)
    fields = ", ".join(dict.fromkeys(e["field"] for e in exc.errors))
    what = {"not_eligible": "not eligible", "duplicate_key": "repeated key(s)"}.get(exc.error, "invalid field(s)")
    if exc.total > len(exc.errors):
        message = f"{exc.total:,} {what}; the first {len(exc.errors)}: {fields}"
        return error_response(422, exc.error, message, request_id(request), errors=exc.errors, errors_total=exc.total)
    return error_response(422, exc.error, f"{exc.total} {what}: {fields}", request_id(request), errors=exc.errors)


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    reason = str(exc)
    if reason.startswith((LOADING, STARTING)):
        message = f"no model is loaded yet: {reason}. Try again in a few seconds; /health/ready says when it is ready."
        return error_response(503, "model_not_ready", message, request_id(request))
    advice = (
        "Train and promote one (`make run` or the Airflow DAG); the service picks it up by itself."
        if "has no `" in reason
        else "The service retries by itself; /health/ready says when it is ready."
    )
    message = f"no model is loaded: {reason}. {advice}"
    return error_response(503, "model_not_ready", message, request_id(request))


async def _timeout(request: Request, exc: Exception) -> JSONResponse:
    return error_response(504, "prediction_timeout", str(exc), request_id(request))


async def _batcher_failed(request: Request, exc: Exception) -> JSONResponse:
    return error_response(503, "batcher_failed", str(exc), request_id(request))


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return error_response(413, "payload_too_large", str(exc), request_id(request))


async def _media_type(request: Request, exc: Exception) -> JSONResponse:
    return error_response(415, "unsupported_media_type", str(exc), request_id(request))


async def _parameters_invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation (query and path parameters of the read endpoints) in the same shape as ours."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body")) or "request",
         "message": f"{e.get('input')!r:.40} is not allowed: {e.get('msg', 'invalid')}"}
        for e in exc.errors()
    ][:MAX_LISTED_ERRORS]  # fmt: skip
    fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
    return error_response(
        422, "invalid_input", f"{len(errors)} invalid field(s): {fields}", request_id(request), errors=errors
    )


async def _not_explainable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "not_explainable", str(exc), request_id(request))


async def _explanations_busy(request: Request, exc: Exception) -> JSONResponse:
    response = error_response(503, "explanations_busy", str(exc), request_id(request))
    response.headers["Retry-After"] = "1"
    return response


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = _HTTP_ERRORS.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, error, str(exc.detail), request_id(request))
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _registry_unreachable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(502, "registry_unavailable", str(exc), request_id(request))


async def _unknown_plot(request: Request, exc: Exception) -> JSONResponse:
    message, allowed = str(exc), list(PLOT_NAMES)
    errors = [{"field": "name", "message": message, "allowed": allowed}]
    return error_response(404, "not_found", message, request_id(request), errors=errors)


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client gone before its answer (counted, never sent)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client closed the connection before sending its whole body: nothing to answer and nothing wrong
    here (no 500, no error log line). Counted in the request metrics as 499."""
    rid = request_id(request)
    log.info("request %s: the client closed the connection before sending its whole body", rid)
    message = "the client closed the connection before sending its whole body"
    return error_response(CLIENT_CLOSED_REQUEST, "client_closed_request", message, rid)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id(request)
    log.exception("unexpected error answering request %s", rid)
    return error_response(500, "internal_error", "unexpected error; quote the request id when reporting it", rid)


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception to its status code and ``ErrorBody`` (anything unexpected: 500, logged)."""
    app.add_exception_handler(InvalidBodyError, _invalid)
    app.add_exception_handler(RequestValidationError, _parameters_invalid)
    app.add_exception_handler(ModelNotReadyError, _not_ready)
    app.add_exception_handler(PredictionTimeoutError, _timeout)
    app.add_exception_handler(BatcherFailedError, _batcher_failed)
    app.add_exception_handler(PayloadTooLargeError, _too_large)
    app.add_exception_handler(BatchTooLargeError, _too_large)
    app.add_exception_handler(UnsupportedMediaTypeError, _media_type)
    app.add_exception_handler(NotExplainableModelError, _not_explainable)
    app.add_exception_handler(ExplanationsBusyError, _explanations_busy)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RegistryUnreachableError, _registry_unreachable)
    app.add_exception_handler(UnknownPlotError, _unknown_plot)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
