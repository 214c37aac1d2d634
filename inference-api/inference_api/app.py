"""The FastAPI application: ``create_app(settings)`` builds a self-contained service (its own model manager,
prediction log, batcher and metrics registry); uvicorn runs it with ``--factory`` (see ``__main__``).

Where things are: ``routes/`` (one router per resource), ``errors`` (the one error map), ``middleware`` (the
edge: request id, body limit, request metrics), ``direct`` (the prediction routes' path past the framework's
layers), ``protocol_path`` (``POST /predict``'s path past ASGI, from uvicorn's protocol), ``components`` (the parts, started in the lifespan),
``deps`` (how endpoints reach them), ``contract`` (request/response models and raw-body validation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from inference_api import __version__, direct
from inference_api.components import Components
from inference_api.contract import with_request_models
from inference_api.errors import register_error_handlers
from inference_api.middleware import EdgeMiddleware
from inference_api.model_manager import ModelSource
from inference_api.protocol_path import ProtocolPath
from inference_api.routes import health, model, outcomes, predict
from inference_api.settings import ApiSettings

DESCRIPTION = (
    "Scores hospital encounters of diabetic patients with the registry's `champion` model of "
    "`diabetes-readmission`: the three classes of `readmitted` and the 30-day readmission risk P(<30). "
    "Every prediction is logged; `/metrics` is for Prometheus."
)

DOCS_ASSETS_URL = "/docs-assets"  # the documentation pages' scripts, style sheets and icon


def create_app(settings: ApiSettings | None = None, source_factory: Callable[[], ModelSource] | None = None) -> FastAPI:
    """A complete service; ``source_factory`` replaces the registry access (default: MLflow)."""
    settings = settings or ApiSettings()
    parts = Components.build(settings, source_factory)
    outcome_store = outcomes.OutcomeStore(settings.log_url)
    app = _framework_app(parts, outcome_store)
    _attach_state(app, settings, parts, outcome_store)
    app.add_middleware(
        EdgeMiddleware, metrics=parts.metrics, max_body_bytes=settings.max_body_bytes, in_flight=parts.in_flight
    )
    register_error_handlers(app)
    _register_routes(app, parts)
    _install_openapi(app, settings)
    return app


def _framework_app(parts: Components, outcome_store: outcomes.OutcomeStore) -> FastAPI:
    """The FastAPI app, whose lifespan starts ``parts`` and stops them (and the outcome store's engine)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await parts.start()
        yield
        await parts.stop()
        outcome_store.dispose()

    # /docs and /redoc with the Swagger UI and ReDoc files of the fastapi-offline package, served by the app
    # itself (FastAPI's own pages load them from a CDN: blank offline); no validator badge (it would send the
    # document's address to an online validator).
    return FastAPIOffline(
        title="Diabetes readmission inference API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"validatorUrl": None},
        # The API's telemetry is Prometheus (/metrics) and the prediction log. FastAPI's native OpenTelemetry
        # bridge, on by default, asked the OpenTelemetry API for its three global providers on every request
        # to learn that none is configured (2.6 us, ~3 % of a prediction's event-loop time at 64 clients).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )


def _attach_state(app: FastAPI, settings: ApiSettings, parts: Components, outcome_store: outcomes.OutcomeStore) -> None:
    """What the routes and dependencies read from ``app.state`` (``deps``)."""
    app.state.components = parts
    app.state.settings = settings
    app.state.manager = parts.manager
    app.state.prediction_log = parts.prediction_log
    app.state.batcher = parts.batcher
    app.state.metrics = parts.metrics
    app.state.outcome_store = outcome_store


def _register_routes(app: FastAPI, parts: Components) -> None:
    """The routes, with the prediction routes' shorter paths (``direct``, ``protocol_path``)."""
    # The prediction routes skip the framework's per-request layers (``direct``): same middleware, same errors.
    direct.install(app, predict.router.routes)
    # An ordinary single-encounter request is answered from the protocol (``protocol_path``): same answer.
    app.state.protocol_path = ProtocolPath(app, parts)
    for router in (predict.router, model.router, outcomes.router, health.router):
        # The routes themselves, not the routers: an included router is one more dispatch layer per request
        # in this FastAPI (8 us, 4 % of a request at 64 clients; bench/request_overhead.py).
        app.router.routes.extend(router.routes)


def _install_openapi(app: FastAPI, settings: ApiSettings) -> None:
    """The OpenAPI document with the request bodies' models (``with_request_models``), made once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_request_models(FastAPI.openapi(app), settings.max_batch_size)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
