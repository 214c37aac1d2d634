"""The FastAPI application: endpoints, error mapping, request ids and metrics.

``create_app(settings)`` builds a self-contained app (its own model manager, prediction log, batcher and
metrics registry); uvicorn runs it with ``--factory`` (see ``__main__``).
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api import __version__
from inference_api.batcher import Batcher, InFlight, ModelNotReadyError
from inference_api.metrics import Metrics
from inference_api.model_manager import LoadedModel, ModelManager, ModelSource
from inference_api.prediction_log import PredictionLog
from inference_api.settings import ApiSettings
from readmission import schema
from readmission.db import display_url

log = logging.getLogger("inference_api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = frozenset(
    {"/predict", "/predict/batch", "/model", "/model/reload", "/health/live", "/health/ready", "/metrics"}
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# --- response models (documentation and contract) ---------------------------------------------------------


class ModelRef(BaseModel):
    """The registry version that answered."""

    name: str
    version: str
    alias: str


class Scores(BaseModel):
    """One encounter's prediction."""

    predicted_class: str = Field(description="Most probable class of `readmitted`: NO, >30 or <30.")
    probabilities: dict[str, float] = Field(description="Probability of each class; they sum to 1.")
    risk_30_days: float = Field(description="P(<30): the 30-day readmission risk.")
    risk_band: str = Field(description="low / medium / high, from RISK_BAND_THRESHOLDS.")


class Prediction(Scores):
    """Answer of POST /predict."""

    request_id: str
    model: ModelRef


class BatchPrediction(BaseModel):
    """Answer of POST /predict/batch: one entry per encounter, in request order."""

    request_id: str
    model: ModelRef
    predictions: list[Scores]


class BatchRequest(BaseModel):
    """Several encounters scored in one call."""

    encounters: list[schema.EncounterFeatures]


class ModelInfo(BaseModel):
    """The model being served."""

    name: str
    version: str
    alias: str
    run_id: str
    loaded_at: datetime
    prediction_path: str
    metrics: dict[str, float]


class ErrorItem(BaseModel):
    """One invalid field."""

    field: str
    message: str
    allowed: list[str] | None = None
    minimum: int | None = None
    maximum: int | None = None


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: str
    message: str
    request_id: str
    errors: list[ErrorItem] | None = None


class PayloadTooLargeError(Exception):
    """The body (or the batch) is larger than allowed."""


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library on the hot path)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, error: str, message: str, request_id: str, **extra: Any) -> JSONResponse:
    body = {"error": error, "message": message, "request_id": request_id, **extra}
    return FastJSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


class InvalidBodyError(Exception):
    """The request body is not a valid request: each bad field, as the 422 answer lists them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_body(body: bytes, model: type[ModelT]) -> ModelT:
    """Validate raw JSON bytes straight into ``model`` (one pass in pydantic-core, no intermediate dict).

    Raises ``InvalidBodyError`` (422) naming every bad field, or a 400 when the body is not UTF-8 text.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                raise StarletteHTTPException(400, "the request body is not UTF-8 text") from None
        raise InvalidBodyError([_field_error(dict(e)) for e in errors]) from None


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or os.urandom(16).hex())


def _field_error(err: dict[str, Any]) -> dict[str, Any]:
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error") or err.get("msg", "")
        return {"field": "body", "message": f"the body is not valid JSON ({detail})"}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    # A Literal failure on a nullable field is reported under its type branch ("race", "literal[...]").
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"none", "int", "str"}))]
    name = parts[-1] if parts else ""
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
    item: dict[str, Any] = {"field": where or "body", "message": err.get("msg", "invalid")}
    col = schema.COLUMNS_BY_NAME.get(name)
    if col is not None and col.levels:
        item["allowed"] = [*col.levels, *(["null"] if col.may_be_missing else [])]
    elif col is not None and col.minimum is not None:
        item["minimum"], item["maximum"] = col.minimum, col.maximum
    elif name in schema.HISTORY_FEATURE_NAMES:
        history = next(h for h in schema.HISTORY_FEATURES if h.name == name)
        item["minimum"], item["maximum"] = 0, history.maximum
    elif col is not None and col.kind is schema.Kind.DIAGNOSIS:
        item["message"] += f" (an ICD-9 code like 428, 250.13, V45 or E888; pattern {schema.DIAGNOSIS_PATTERN})"
    return item


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "EncounterFeatures": schema.EncounterFeatures,
    "BatchRequest": BatchRequest,
}


def _request_body(name: str, examples: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an endpoint that validates its raw body with ``parse_body``."""
    content = {"schema": {"$ref": f"#/components/schemas/{name}"}, "examples": examples}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def _with_request_models(spec: dict[str, Any], max_batch_size: int) -> dict[str, Any]:
    """Add the request models (and the models they use) to the document's components, with the batch
    limit this instance enforces (MAX_BATCH_SIZE; a longer batch is answered 413)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, model in REQUEST_MODELS.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    encounters = schemas["BatchRequest"]["properties"]["encounters"]
    encounters["maxItems"] = max_batch_size
    encounters["description"] = f"At most {max_batch_size:,} encounters (MAX_BATCH_SIZE); more are answered 413."
    return spec


def _band(risk: float, bands: tuple[float, float]) -> str:
    return "low" if risk < bands[0] else "medium" if risk < bands[1] else "high"


class _Edge:
    """Pure ASGI middleware: request id, body-size limit, request metrics (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, in_flight: InFlight) -> None:
        self.app = app
        self.metrics = metrics
        self.in_flight = in_flight
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["started"] = started
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        self.in_flight.count += 1  # also the in-flight gauge (read at scrape time)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                if not any(key.lower() == b"x-request-id" for key, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                response = _error(
                    413,
                    "payload_too_large",
                    f"request body of {int(length):,} bytes is over the limit of {self.max_body:,} (MAX_BODY_BYTES)",
                    request_id,
                )
                await response(scope, receive, send_with_id)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise PayloadTooLargeError(f"request body is over the limit of {self.max_body:,} bytes")
                return message

            await self.app(scope, limited_receive, send_with_id)
        finally:
            self.in_flight.count -= 1
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - started)


def create_app(settings: ApiSettings | None = None, source_factory: Callable[[], ModelSource] | None = None) -> FastAPI:
    """A complete service; ``source_factory`` replaces the registry access (default: MLflow)."""
    settings = settings or ApiSettings()
    # MLflow's client retries a dead server for minutes by default; the poller has its own backoff.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    metrics = Metrics()
    bands = settings.bands
    manager = ModelManager(
        source_factory or (lambda: ModelSource(settings.tracking_uri, settings.model_name, settings.model_alias)),
        metrics,
        poll_interval=settings.model_poll_interval_seconds,
        retry_max=settings.model_retry_max_seconds,
    )
    prediction_log = PredictionLog(
        settings.log_url,
        metrics,
        queue_size=settings.prediction_log_queue_size,
        batch_size=settings.prediction_log_batch_size,
    )
    in_flight = InFlight()
    metrics.in_flight.set_function(lambda: in_flight.count)
    batcher = Batcher(
        manager,
        metrics,
        in_flight=in_flight,
        enabled=settings.microbatch_enabled,
        max_rows=settings.microbatch_max_rows,
        max_wait_ms=settings.microbatch_max_wait_ms,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "starting: model %s@%s from %s; prediction log %s; micro-batching %s",
            settings.model_name,
            settings.model_alias,
            display_url(settings.tracking_uri) if "://" in settings.tracking_uri else settings.tracking_uri,
            display_url(settings.log_url),
            f"on (<= {settings.microbatch_max_rows} rows, {settings.microbatch_max_wait_ms} ms)"
            if settings.microbatch_enabled
            else "off",
        )
        prediction_log.start()
        manager.start()
        batcher.start()
        # Everything imported so far (MLflow, sklearn, pandas) lives as long as the process: keep it out of
        # the garbage collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        # Each request allocates a few hundred short-lived objects; collect the young generation every 50,000
        # allocations instead of 700 (fewer, still short pauses; memory stays bounded).
        gc.set_threshold(50_000, 20, 100)
        yield
        await batcher.stop()
        manager.stop()
        await run_in_threadpool(prediction_log.close, settings.prediction_log_flush_seconds)

    examples = list(schema.EXAMPLE_ENCOUNTERS.items())
    app = FastAPI(
        title="Diabetes readmission inference API",
        version=__version__,
        description=(
            "Scores hospital encounters of diabetic patients with the registry's `champion` model of "
            "`diabetes-readmission`: the three classes of `readmitted` and the 30-day readmission risk P(<30). "
            "Every prediction is logged; `/metrics` is for Prometheus."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.prediction_log = prediction_log
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(_Edge, metrics=metrics, max_body_bytes=settings.max_body_bytes, in_flight=in_flight)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_request_models(FastAPI.openapi(app), settings.max_batch_size)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # --- errors, mapped in one place -----------------------------------------------------------------------

    @app.exception_handler(InvalidBodyError)
    async def _invalid(request: Request, exc: InvalidBodyError) -> JSONResponse:
        fields = ", ".join(dict.fromkeys(e["field"] for e in exc.errors))
        return _error(
            422,
            "invalid_input",
            f"{len(exc.errors)} invalid field(s): {fields}",
            _request_id(request),
            errors=exc.errors,
        )

    @app.exception_handler(ModelNotReadyError)
    async def _not_ready(request: Request, exc: ModelNotReadyError) -> JSONResponse:
        return _error(
            503,
            "model_not_ready",
            f"no model is loaded: {exc}. Train and promote one (`make run` or the Airflow DAG); the service "
            "picks it up by itself.",
            _request_id(request),
        )

    @app.exception_handler(PayloadTooLargeError)
    async def _too_large(request: Request, exc: PayloadTooLargeError) -> JSONResponse:
        return _error(413, "payload_too_large", str(exc), _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {400: "malformed_body", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        response = _error(
            exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail), _request_id(request)
        )
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = _request_id(request)
        log.exception("unexpected error answering request %s", request_id)
        return _error(500, "internal_error", "unexpected error; quote the request id when reporting it", request_id)

    # --- endpoints -------------------------------------------------------------------------------------------

    def _scores(model: LoadedModel, probabilities: np.ndarray) -> list[dict[str, Any]]:
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

    def _log(
        request: Request, endpoint: str, model: LoadedModel, rows: list[dict[str, Any]], scores: list[dict[str, Any]]
    ) -> str:
        request_id = _request_id(request)
        started = request.scope.get("state", {}).get("started", time.perf_counter())
        latency_ms = (time.perf_counter() - started) * 1000.0
        now = datetime.now(UTC)
        prediction_log.submit(
            [
                {
                    "log_id": os.urandom(16).hex(),  # unique per row, even when a client reuses a request id
                    "request_id": request_id,
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
                }
                for i, (row, s) in enumerate(zip(rows, scores, strict=True))
            ]
        )
        return request_id

    def _model_ref(model: LoadedModel) -> dict[str, str]:
        return {"name": model.name, "version": model.version, "alias": model.alias}

    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "The body could not be read at all (not UTF-8 text)."},
        422: {"model": ErrorBody, "description": "Invalid input: each bad field with its allowed values or range."},
        503: {"model": ErrorBody, "description": "No model loaded yet (train and promote one)."},
        413: {"model": ErrorBody, "description": "Body or batch too large."},
        500: {"model": ErrorBody, "description": "Unexpected error (the request id identifies it in the logs)."},
    }

    # The request bodies are read as bytes and validated by pydantic-core in one pass (``parse_body``):
    # FastAPI's own body handling would decode the JSON into Python objects first and validate them after.
    # The OpenAPI document still describes them (``_request_body`` and ``openapi`` below).
    @app.post(
        "/predict",
        response_model=Prediction,
        responses=error_responses,
        tags=["predict"],
        openapi_extra=_request_body(
            "EncounterFeatures", {name: {"summary": name, "value": value} for name, value in examples}
        ),
    )
    async def predict(request: Request) -> Response:
        """Score one encounter: predicted class, class probabilities, 30-day risk and its band."""
        encounter = parse_body(await request.body(), schema.EncounterFeatures)
        rows = [encounter.model_dump()]
        model, probabilities = await batcher.predict(rows)
        scores = _scores(model, probabilities)
        request_id = _log(request, "predict", model, rows, scores)
        return FastJSONResponse({"request_id": request_id, "model": _model_ref(model), **scores[0]})

    @app.post(
        "/predict/batch",
        response_model=BatchPrediction,
        responses=error_responses,
        tags=["predict"],
        openapi_extra=_request_body(
            "BatchRequest",
            {"three patients": {"summary": "The example patients", "value": {"encounters": [v for _, v in examples]}}},
        ),
    )
    async def predict_batch(request: Request) -> Response:
        """Score up to MAX_BATCH_SIZE encounters in one call (answers in request order)."""
        body = parse_body(await request.body(), BatchRequest)
        if len(body.encounters) > settings.max_batch_size:
            raise PayloadTooLargeError(
                f"{len(body.encounters):,} encounters in one batch; the limit is {settings.max_batch_size:,} (MAX_BATCH_SIZE)"
            )
        if not body.encounters:
            return FastJSONResponse(
                {"request_id": _request_id(request), "model": _ready_model_ref(), "predictions": []}
            )
        rows = [e.model_dump() for e in body.encounters]
        model, probabilities = await batcher.predict(rows, gather=False)
        scores = _scores(model, probabilities)
        request_id = _log(request, "predict_batch", model, rows, scores)
        return FastJSONResponse({"request_id": request_id, "model": _model_ref(model), "predictions": scores})

    def _ready_model_ref() -> dict[str, str]:
        model = manager.current
        if model is None:
            raise ModelNotReadyError(manager.not_ready_reason)
        return _model_ref(model)

    @app.get("/model", response_model=ModelInfo, responses={503: error_responses[503]}, tags=["model"])
    async def model_info() -> ModelInfo:
        """The served version, its run, training metrics and when it was loaded."""
        model = manager.current
        if model is None:
            raise ModelNotReadyError(manager.not_ready_reason)
        return ModelInfo(
            name=model.name,
            version=model.version,
            alias=model.alias,
            run_id=model.run_id,
            loaded_at=model.loaded_at,
            prediction_path=model.predictor.path,
            metrics=model.metrics,
        )

    @app.post("/model/reload", tags=["model"], responses={401: {"model": ErrorBody}})
    async def reload(request: Request) -> dict[str, Any]:
        """Check the registry alias now and swap if it moved (needs `Authorization: Bearer <RELOAD_TOKEN>` when set)."""
        if settings.reload_token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.reload_token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise StarletteHTTPException(
                    401, "a valid reload token is required (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"}
                )
        outcome = await run_in_threadpool(manager.check)
        model = manager.current
        return {
            "outcome": outcome,
            "version": model.version if model else None,
            "last_error": manager.last_error,
        }

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process is up and answering (it may not have a model yet)."""
        return {"status": "alive"}

    @app.get("/health/ready", tags=["health"], responses={503: {"description": "Not ready, with the reason."}})
    async def ready() -> JSONResponse:
        """Ready when a model is loaded; 503 with the reason otherwise."""
        model = manager.current
        if model is None:
            return JSONResponse({"status": "not_ready", "reason": manager.not_ready_reason}, status_code=503)
        return JSONResponse({"status": "ready", "model": _model_ref(model)})

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
