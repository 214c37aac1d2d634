"""The edge of every request, as pure ASGI middleware (cheaper than BaseHTTPMiddleware): the request id
(``X-Request-ID``, taken from the client when well-formed), the body-size limit (413) and the request
metrics (count, duration, in flight).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from inference_api.batcher import InFlight
from inference_api.errors import PayloadTooLargeError, error_response
from inference_api.ids import new_id
from inference_api.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = frozenset(
    {"/predict", "/predict/batch", "/model", "/model/reload", "/health/live", "/health/ready", "/metrics"}
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class EdgeMiddleware:
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
        request_id = request_id_of(headers.get(b"x-request-id"))
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["started"] = started
        path = scope.get("path", "")
        status = [500]
        self.in_flight.count += 1  # also the in-flight gauge (read at scrape time)
        try:
            send_with_id = _sending_request_id(send, request_id, status)
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                message = (
                    f"request body of {int(length):,} bytes is over the limit of {self.max_body:,} (MAX_BODY_BYTES)"
                )
                response = error_response(413, "payload_too_large", message, request_id)
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, _limited(receive, self.max_body), send_with_id)
        except asyncio.CancelledError:
            if status[0] == 500:  # stopped before answering: shutdown.AnswerBeforeExit answers it 503
                status[0] = 503
            raise
        finally:
            self.in_flight.count -= 1
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.observe_request(endpoint, scope["method"], status[0], time.perf_counter() - started)


def request_id_of(given: bytes | None) -> str:
    """The client's ``X-Request-ID`` value when it is well-formed (1-64 of ``A-Za-z0-9._-``), else a new id."""
    text = (given or b"").decode("latin-1")
    return text if _REQUEST_ID.match(text) else new_id()


def _sending_request_id(send: Send, request_id: str, status: list[int]) -> Send:
    """``send`` that adds the ``X-Request-ID`` header (unless set) and notes the status code in ``status[0]``."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            headers = list(message.get("headers") or [])
            if not any(key.lower() == b"x-request-id" for key, _ in headers):
                headers.append((b"x-request-id", request_id.encode()))
            message["headers"] = headers
        await send(message)

    return send_with_id


def _limited(receive: Receive, max_body: int) -> Receive:
    """``receive`` that raises ``PayloadTooLargeError`` once the body read so far exceeds ``max_body`` bytes."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_body:
                raise PayloadTooLargeError(f"request body is over the limit of {max_body:,} bytes")
        return message

    return limited_receive
