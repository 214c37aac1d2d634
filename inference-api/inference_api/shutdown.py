"""Graceful shutdown: every request accepted before SIGTERM gets an answer, within a known time.

On SIGTERM uvicorn stops accepting connections and waits for the requests in flight, for at most its
graceful timeout; past it, it cancels them and closes their connections, and a client still sending its
body sees a reset. ``AnswerBeforeExit`` wraps the app so that this never happens: ``answer_seconds`` after
SIGTERM, each request still without a response is stopped and answered ``503`` with ``Connection: close``
(the client may retry on another replica; its rows were not logged, as it was not served). uvicorn's
graceful timeout is ``answer_seconds`` plus a margin for those answers to go out (see ``__main__``), so it
is never reached, however slow the machine or long the queue of batch requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The 503 of a request unanswered at shutdown (also the protocol path's, at uvicorn's graceful timeout).
REFUSAL = orjson.dumps(
    {
        "error": "shutting_down",
        "message": "this instance is shutting down and could not answer in time; retry (another instance answers)",
    }
)


class AnswerBeforeExit:
    """ASGI wrapper: after ``begin()`` (SIGTERM), requests unanswered for ``answer_seconds`` get a 503."""

    def __init__(self, app: ASGIApp, answer_seconds: float) -> None:
        self.app = app
        self.answer_seconds = answer_seconds
        self._open: dict[asyncio.Task[Any], list[bool]] = {}  # request task -> [response started]
        self._stopped: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            self._loop = asyncio.get_running_loop()  # the lifespan: the loop that serves requests
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        started = [False]

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        self._open[task] = started
        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if task not in self._stopped or started[0]:
                raise
            task.uncancel()
            await _refuse(send)
        finally:
            self._open.pop(task, None)
            self._stopped.discard(task)

    def begin(self) -> None:
        """SIGTERM arrived: answer what is still unanswered in ``answer_seconds`` (safe from a signal handler)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, self.answer_seconds, self._stop_unanswered)

    def _stop_unanswered(self) -> None:
        waiting = [task for task, started in self._open.items() if not started[0]]
        if waiting:
            log.warning(
                "shutting down: %d request(s) unanswered %.0f s after SIGTERM are answered 503",
                len(waiting),
                self.answer_seconds,
            )
        for task in waiting:
            self._stopped.add(task)
            task.cancel()


REFUSAL_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"connection", b"close"),
    (b"retry-after", b"1"),
)


async def _refuse(send: Send) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": REFUSAL_HEADERS})
    await send({"type": "http.response.body", "body": REFUSAL})
