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
does with its metrics), never on itself. Only a ``POST`` route whose endpoint takes the ``Request`` alone is
served here (``direct_endpoints`` refuses, at start-up, one with dependencies or parameters: the direct path
would skip them). An endpoint's exception goes to the handler the app registered for it in Starlette's lookup
order (an ``HTTPException``'s status code, then its class or nearest base); the server-error handler (``500``,
else ``Exception``) answers the unexpected ones (500 ``internal_error``, logged with the request id, not raised
to the server), and also a handler that fails or returns no response. If that handler itself fails, or a
middleware raises outside the endpoint, the exception goes to the server, which answers a plain-text 500 (the
full path's ``ServerErrorMiddleware`` would try the server-error handler first). OpenTelemetry instrumentation that wraps the whole app (FastAPI's native telemetry, off in
``create_app``, or opentelemetry-instrumentation-asgi) still sees these requests, without the router's
``http.route``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

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
            response = await answer_error(self.owner, request, exc)
        await response(scope, receive, send)


async def answer_error(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The response of ``app``'s handler for ``exc``, looked up as Starlette does: an ``HTTPException``'s
    status code, then its class or nearest base; the server-error handler's (key ``500``, else ``Exception``)
    when that handler fails or gives no response. Raises ``exc`` when the app has neither."""
    handlers = app.exception_handlers
    status = exc.status_code if isinstance(exc, HTTPException) else None
    handler = handlers.get(status) or next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    server_error = handlers.get(500) or handlers.get(Exception)
    try:
        response = await _call(handler, request, exc)
    except Exception:
        log.exception("the error handler for %s failed", type(exc).__name__)
        response = None
    if response is None and handler is not server_error:
        response = await _call(server_error, request, exc)
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


def direct_endpoints(routes: Sequence[BaseRoute]) -> dict[str, Endpoint]:
    """Path -> endpoint of ``routes``, each of which must be a ``POST`` ``APIRoute`` whose endpoint takes the
    ``Request`` alone: the direct path runs no dependency (an auth check added to such a route would be
    skipped) and calls no other method's endpoint. Raises ``TypeError`` naming the route that is not."""
    endpoints: dict[str, Endpoint] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or route.methods != {"POST"}:
            raise TypeError(f"{route!r}: the direct path takes POST API routes only")
        dependant = route.dependant
        taken = [*dependant.dependencies, *dependant.path_params, *dependant.query_params, *dependant.header_params,
                 *dependant.cookie_params, *dependant.body_params]  # fmt: skip
        if route.dependencies or taken or dependant.request_param_name is None:
            raise TypeError(
                f"POST {route.path}: the direct path calls its endpoint with the Request alone; it has "
                "dependencies or parameters, which only FastAPI's full path would resolve"
            )
        endpoints[route.path] = route.endpoint
    return endpoints


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Put ``DirectRoutes`` for ``routes`` (``direct_endpoints``; raises its ``TypeError``) in front of the
    app's own middleware stack (built on the app's first request or lifespan, after every middleware and
    handler is registered)."""
    endpoints = direct_endpoints(routes)
    framework_stack = app.build_middleware_stack

    def build() -> ASGIApp:
        return DirectRoutes(app, framework_stack(), endpoints)

    app.build_middleware_stack = build  # type: ignore[method-assign]
