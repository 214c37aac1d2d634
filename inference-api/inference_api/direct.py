"""The prediction routes' direct path: ``POST /predict`` and ``POST /predict/batch`` reach their endpoints
without the framework's per-request layers, through the same edge middleware and the same error map.

Under load the layers between the edge and an endpoint (Starlette's error, telemetry, body-limit, exception
and exit-stack middleware, the router's matching, FastAPI's request handler and its dependency solving, and
the send wrappers each adds) took about a quarter of the event loop's time per single-encounter request
(py-spy, 64 clients; ``bench/api.py``). The prediction endpoints need none of them: they read the raw body,
validate it themselves (``contract.parse_body``), raise only exceptions the error map knows and return a
ready ``Response``. Every other request, and these paths with another method, take FastAPI's full path, and
the routes stay in the router, so the OpenAPI document still describes them.

An exception goes to the handler the app registered for its class, or its nearest base (Starlette's
lookup order); ``Exception``'s handler answers the unexpected ones (500, logged with the request id).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from inference_api.middleware import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI: ``POST`` to one of ``routes`` goes to its endpoint inside ``edge``; anything else to ``framework``."""

    def __init__(
        self, app: FastAPI, framework: ASGIApp, routes: Mapping[str, Endpoint], edge: Callable[[ASGIApp], ASGIApp]
    ) -> None:
        self.app = app
        self.framework = framework
        self.routes = dict(routes)
        self.direct = edge(self._endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            await self.direct(scope, receive, send)
        else:
            await self.framework(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.routes[scope["path"]](request)
        except Exception as exc:  # answered through the app's error map (re-raised when it has no handler)
            response = await self._answer(request, exc)
        await response(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception) -> Response:
        """The response the app's handler for ``exc`` gives (the handler of its class or nearest base)."""
        handlers = self.app.exception_handlers
        handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
        if handler is None:
            raise exc
        answer: Any = handler(request, exc)
        response: Response = await answer if inspect.isawaitable(answer) else answer
        return response


def install(app: FastAPI, routes: Mapping[str, Endpoint], edge: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put ``DirectRoutes`` in front of the app's own middleware stack (built on its first request)."""
    framework_stack = app.build_middleware_stack

    def build() -> ASGIApp:
        return DirectRoutes(app, framework_stack(), routes, edge)

    app.build_middleware_stack = build  # type: ignore[method-assign]
