"""The prediction routes' direct path: ``POST /predict`` and ``POST /predict/batch`` reach their endpoints
without the framework's per-request layers, through the app's own middleware and the same error map.

Under load the layers between the edge and an endpoint (Starlette's error, exception-telemetry, body-limit,
exception and exit-stack middleware, the router's matching, FastAPI's request handler and its dependency
solving, and the send wrappers each adds) took about a quarter of the event loop's time per single-encounter
request (py-spy, 64 clients; ``bench/api.py``). The prediction endpoints need none of them: they read the raw
body, validate it themselves (``contract.parse_body``), raise only exceptions the error map knows and return a
ready ``Response``. Every other request, these paths with another method, and any path under a ``root_path``
or a mount, take FastAPI's full path; the routes stay in the router, so the OpenAPI document describes them.

The direct path is wrapped in every middleware the app was given (``app.user_middleware``, built again around
the endpoint call), so a middleware added to the app applies to both paths; each such middleware is therefore
instantiated twice, so one must keep any state across requests in objects it is given (as ``EdgeMiddleware``
does with its metrics), never on itself. An exception goes to the handler the app registered for its class or
its nearest base (Starlette's lookup order); ``Exception``'s handler answers the unexpected ones (500
``internal_error``, logged with the request id, not raised to the server), and also a handler that fails or
returns no response; if ``Exception``'s handler itself fails, the exception goes to the server, which answers
500 as for any app. OpenTelemetry instrumentation that wraps the whole app (FastAPI's native telemetry, off in
``create_app``, or opentelemetry-instrumentation-asgi) still sees these requests, without the router's
``http.route``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from inference_api.middleware import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI: ``POST`` to one of ``routes`` goes to its endpoint inside the app's middleware; anything else to
    ``app`` (the framework's own stack)."""

    def __init__(self, owner: FastAPI, app: ASGIApp, routes: Mapping[str, Endpoint]) -> None:
        self.owner = owner
        self.app = app
        self.routes = dict(routes)
        direct: ASGIApp = self._endpoint
        for middleware in reversed(owner.user_middleware):
            direct = middleware.cls(direct, *middleware.args, **middleware.kwargs)
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.routes
            and not scope.get("root_path")
        ):
            await self.direct(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.routes[scope["path"]](request)
        except Exception as exc:  # answered through the app's error map
            response = await self._answer(request, exc)
        await response(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception) -> Response:
        """The response of the app's handler for ``exc`` (its class's or nearest base's); the ``Exception``
        handler's when that handler fails or gives no response. Raises ``exc`` when the app has neither."""
        handlers = self.owner.exception_handlers
        handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
        try:
            response = await _call(handler, request, exc)
        except Exception:
            log.exception("the error handler for %s failed", type(exc).__name__)
            response = None
        if response is None and handler is not handlers.get(Exception):
            response = await _call(handlers.get(Exception), request, exc)
        if response is None:
            raise exc
        return response


async def _call(handler: Any, request: Request, exc: Exception) -> Response | None:
    """What ``handler`` answers (awaited when it is a coroutine function); None without a handler, or for an
    answer that is not a ``Response``."""
    if handler is None:
        return None
    answer = handler(request, exc)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer if isinstance(answer, Response) else None


def install(app: FastAPI, routes: Mapping[str, Endpoint]) -> None:
    """Put ``DirectRoutes`` for ``routes`` (path -> endpoint) in front of the app's own middleware stack
    (built on the app's first request or lifespan, after every middleware and handler is registered)."""
    framework_stack = app.build_middleware_stack

    def build() -> ASGIApp:
        return DirectRoutes(app, framework_stack(), routes)

    app.build_middleware_stack = build  # type: ignore[method-assign]
