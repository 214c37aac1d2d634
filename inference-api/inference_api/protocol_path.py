"""The protocol path: an ordinary ``POST /predict`` is answered from uvicorn's protocol, without
an ASGI task.

After ``direct`` had taken the framework's layers off the prediction routes, each request still went through
the ASGI plumbing around the endpoint: a request task and its coroutine steps, the ``receive`` and ``send``
wrappers of the shutdown guard and the edge middleware, Starlette's ``Request`` and ``Response`` calls and
uvicorn's ``send``. Without them the event loop's time per single-encounter request fell from about 225 us to
157 us (py-spy at 64 clients, one run each, samples per request), and throughput rose 1.206x
(``bench/revisions.py --base 22a7db7``, 10 pairs, median; head faster in 9; before its review's fixes).
``ProtocolPathHttp`` (uvicorn's httptools protocol, with the coalesced writes of ``coalesce``) holds such a request when its headers are in, and once its body is complete
``ProtocolPath`` validates it (``routes.predict.single_rows``, as the endpoint does) and queues it on the
micro-batcher; when the batch's probabilities come back, a callback scores and logs it (``scores_of``,
``single_answer``, as the endpoint does) and writes the answer: the same JSON, the same headers
(``X-Request-ID``, taken from the client when well-formed) and the same request metrics as the full path.

Only the common case takes it: ``POST /predict`` with no query string, a ``Content-Length`` of at most
``min(OFF_LOOP_BYTES, MAX_BODY_BYTES)``, no ``Transfer-Encoding``, no ``Expect: 100-continue``, no
``Content-Encoding`` (or ``identity``), a ``Content-Type`` of ``application/json`` or none, none of these
headers twice, on an app whose only middleware is ``EdgeMiddleware`` (another middleware must see every
request: its app takes the full path), with micro-batching on, the batcher alive, a model loaded, a client
that reads its answers (the connection's writes not paused) and a body that is valid and eligible. Anything
else (a bad body included) goes to the app, which answers it as if it had never been held (with a request id
and a start time of its own), so every refusal's status and message is the error map's. After a request is
queued, its answer is this module's: an error of the model call (timeout, batcher failure, a failing model)
is answered by the app's handler for it, as ``direct`` looks it up. A client gone before its answer is still
logged, as on the full path; a client gone before its whole body is given to the app (counted 499).

Shutdown: uvicorn asks each connection to stop (``shutdown``): a request still held (its body not complete)
goes to the app, whose ``AnswerBeforeExit`` answers it in time; no later request of the connection is held;
and, as uvicorn does, the connection's current request is answered with ``Connection: close``. A request
already queued is answered (or timed out, 504) within PREDICT_TIMEOUT_SECONDS of its queueing, plus the
watchdog's tick (at most 0.25 s): ``protocol_path_of`` turns the path off unless PREDICT_TIMEOUT_SECONDS is
shorter than ``AnswerBeforeExit``'s answer window, whose margin to uvicorn's graceful timeout (5 s,
``__main__``) covers the tick, so every request is answered before that timeout on both paths.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from inference_api.coalesce import CoalescingHttpProtocol
from inference_api.components import Components
from inference_api.direct import answer_error
from inference_api.middleware import EdgeMiddleware, request_id_of
from inference_api.routes.predict import OFF_LOOP_BYTES, scores_of, single_answer, single_rows
from inference_api.shutdown import REFUSAL, REFUSAL_HEADERS, AnswerBeforeExit

if TYPE_CHECKING:
    from inference_api.model_manager import LoadedModel

log = logging.getLogger(__name__)

PATH = "/predict"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_READ = frozenset({b"content-length", b"content-encoding", b"content-type", b"transfer-encoding", b"x-request-id"})
_SERVER_ERROR_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]


@dataclass
class Held:
    """A request held for the protocol path: its uvicorn cycle, the app it would otherwise go to, its id and
    when its headers were in (``time.perf_counter()``)."""

    cycle: RequestResponseCycle
    app: Any
    request_id: str
    started: float


class ProtocolPath:
    """The protocol path's decisions and answers for one app (``app.state.protocol_path``)."""

    def __init__(self, app: FastAPI, parts: Components) -> None:
        self.app = app
        self.parts = parts
        self.max_bytes = min(OFF_LOOP_BYTES, parts.settings.max_body_bytes)
        self._middleware_ok: bool | None = None

    def _only_edge_middleware(self) -> bool:
        if self._middleware_ok is None:  # the app's middleware is fixed once it serves
            classes: list[Any] = [m.cls for m in self.app.user_middleware]
            self._middleware_ok = classes == [EdgeMiddleware]
        return self._middleware_ok

    def hold(self, cycle: RequestResponseCycle, app: Any) -> Held | None:
        """A ``Held`` for a request that may take the protocol path (counted in flight from now), else None."""
        scope = cycle.scope
        if scope["path"] != PATH or scope["method"] != "POST" or scope["query_string"] or scope["root_path"]:
            return None
        if cycle.waiting_for_100_continue or not self._ready():
            return None
        given: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _READ:
                if name in given:  # which one counts is the full path's to say
                    return None
                given[name] = value
        length = given.get(b"content-length", b"")
        if not length.isdigit() or int(length) > self.max_bytes:
            return None
        if given.get(b"content-encoding", b"identity").lower() != b"identity" or b"transfer-encoding" in given:
            return None
        if given.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower() != b"application/json":
            return None
        given_id = given.get(b"x-request-id")
        self.parts.in_flight.count += 1
        return Held(cycle, app, request_id_of(given_id), time.perf_counter())

    def _ready(self) -> bool:
        batcher = self.parts.batcher
        return (
            batcher.gathers(1)
            and batcher.failure is None
            and self.parts.manager.current is not None
            and self._only_edge_middleware()
        )

    def uncount(self, held: Held) -> None:
        """``held`` goes to the app after all, which counts it itself: no longer counted in flight here."""
        self.parts.in_flight.count -= 1

    def try_enqueue(self, held: Held, protocol: ProtocolPathHttp) -> bool:
        """Validate ``held``'s complete body and queue it on the micro-batcher; its answer is written to
        ``protocol`` when the batch returns. False (nothing queued) when the body is not valid or eligible,
        or anything here fails (logged): the app answers it then."""
        try:
            rows, encounter_ids = single_rows(bytes(held.cycle.body))
        except Exception:  # the app answers it, with the error map's message
            return False
        try:
            future = self.parts.batcher.enqueue(rows)
            future.add_done_callback(partial(self._answer, held, protocol, rows, encounter_ids))
        except Exception:
            log.exception("request %s: could not be queued on the protocol path; the app answers it", held.request_id)
            return False
        return True

    def _answer(
        self,
        held: Held,
        protocol: ProtocolPathHttp,
        rows: list[dict[str, Any]],
        encounter_ids: list[int | None],
        done: asyncio.Future[tuple[LoadedModel, Any]],
    ) -> None:
        """Score, log and write ``held``'s answer (an error of the model call, or of this, as the app's handler
        answers it)."""
        try:
            if done.cancelled():
                raise RuntimeError("the micro-batch of this request was cancelled")
            model, probabilities = done.result()
            scores = scores_of(self.parts, model, probabilities)
            answer = single_answer(self.parts, held.request_id, held.started, model, rows, scores, encounter_ids)
            body = orjson.dumps(answer)
        except Exception as exc:
            task = asyncio.get_running_loop().create_task(self._answer_error(held, protocol, exc))
            task.add_done_callback(partial(self._refuse_if_cancelled, held, protocol))
            protocol.keep(task)
            return
        headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
        self._write(held, protocol, 200, headers, body)

    async def _answer_error(self, held: Held, protocol: ProtocolPathHttp, exc: Exception) -> None:
        """Answer ``exc`` with the app's handler for it, called while ``exc`` is being handled (so a handler's
        ``log.exception`` has its traceback); a plain 500 (as uvicorn's) if even that fails."""
        scope: dict[str, Any] = held.cycle.scope  # type: ignore[assignment]
        scope["app"] = self.app  # as Starlette sets it on the full path (request.app, url_for)
        scope["state"]["request_id"], scope["state"]["started"] = held.request_id, held.started
        try:
            try:
                raise exc
            except Exception:
                response: Response = await answer_error(self.app, Request(scope), exc)
            body = getattr(response, "body", None)
            if not isinstance(body, bytes | memoryview):
                raise TypeError(f"the handler for {type(exc).__name__} gave a {type(response).__name__} without a body")
        except Exception:
            log.exception("request %s: no handler could answer %s", held.request_id, type(exc).__name__)
            held.cycle.keep_alive = False
            self._write(held, protocol, 500, _SERVER_ERROR_HEADERS, b"Internal Server Error")
            return
        self._write(held, protocol, response.status_code, response.raw_headers, bytes(body))

    def _refuse_if_cancelled(self, held: Held, protocol: ProtocolPathHttp, task: asyncio.Task[None]) -> None:
        """uvicorn cancelled the error answer (its graceful timeout; even before the task's first step): the
        shutdown guard's 503 with ``Connection: close``, as the app's requests get at that point."""
        if task.cancelled() and not held.cycle.response_complete:
            held.cycle.keep_alive = False
            self._write(held, protocol, 503, list(REFUSAL_HEADERS), REFUSAL)

    def _write(self, held: Held, protocol: ProtocolPathHttp, status: int, headers: list[Any], body: bytes) -> None:
        """Write the answer (with ``X-Request-ID`` unless set), count it as the edge middleware does, then let
        the connection go on to its next request. An answer that cannot be written (a bad header: nothing is
        written then) is answered a plain 500 with ``Connection: close`` (uvicorn, which has marked the
        response started by then, only closes the connection)."""
        if not any(name == b"x-request-id" for name, _ in headers):
            headers = [*headers, (b"x-request-id", held.request_id.encode())]
        try:
            written = protocol.write_answer(held.cycle, status, headers, body)
        except Exception:
            log.exception("request %s: its answer could not be written", held.request_id)
            status, held.cycle.keep_alive = 500, False
            written = protocol.write_answer(held.cycle, status, _SERVER_ERROR_HEADERS, b"Internal Server Error")
        finally:
            self._count_answer(held, status)
        if written:
            held.cycle.on_response()  # the next pipelined request, if any: not this answer's failure

    def _count_answer(self, held: Held, status: int) -> None:
        """``held`` is answered ``status`` (or given up): out of the in-flight count, into the request metrics."""
        self.parts.in_flight.count -= 1
        self.parts.metrics.observe_request(PATH, "POST", status, time.perf_counter() - held.started)


def protocol_path_of(app: Any) -> ProtocolPath | None:
    """The ``ProtocolPath`` of the app uvicorn serves (a FastAPI app, or one in ``AnswerBeforeExit``), or None:
    another wrapper, or a PREDICT_TIMEOUT_SECONDS not under the shutdown's answer window."""
    path, answer_window = _served(app)
    if path is None or (answer_window is not None and path.parts.settings.predict_timeout_seconds >= answer_window):
        return None
    return path


def _served(app: Any) -> tuple[ProtocolPath | None, float | None]:
    """The ``ProtocolPath`` of the app uvicorn serves (None inside another wrapper) and the shutdown's answer
    window (None without ``AnswerBeforeExit``)."""
    answer_window = None
    if isinstance(app, AnswerBeforeExit):
        app, answer_window = app.app, app.answer_seconds
    path = getattr(getattr(app, "state", None), "protocol_path", None)
    return (path if isinstance(path, ProtocolPath) else None), answer_window


class ProtocolPathHttp(CoalescingHttpProtocol):
    """uvicorn's httptools protocol (with coalesced writes) that holds a ``POST /predict`` for ``ProtocolPath``
    (see the module's docstring) and hands any other request to the app as uvicorn does."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._path = protocol_path_of(self.app)
        self._held: Held | None = None
        self._stopping = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # A client that does not read its answers (writes paused) is served by the full path, which waits;
        # ``app`` is not the app when uvicorn answers the request itself (its limit_concurrency 503).
        usable = self._path is not None and not self._stopping and not self.flow.write_paused and app is self.app
        held = self._path.hold(cycle, app) if usable else None  # type: ignore[union-attr]
        if held is None:
            super()._start_asgi_task(cycle, app)
            return
        self._held = held
        if not cycle.more_body:  # a pipelined request, started after the one before it: its body is in
            self._queue_held()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._held is not None and self._held.cycle is self.cycle and not self.cycle.more_body:
            self._queue_held()

    def _queue_held(self) -> None:
        held, self._held = self._held, None
        assert held is not None and self._path is not None
        if not self._path.try_enqueue(held, self):
            self._to_app(held)

    def _to_app(self, held: Held) -> None:
        """Give ``held`` to the app, as uvicorn would have when its headers were in."""
        self._held = None
        assert self._path is not None
        self._path.uncount(held)
        super()._start_asgi_task(held.cycle, held.app)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._held is not None:  # its body never came: the app counts and logs that (499), as for any request
            self._to_app(self._held)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self._stopping = True  # no later request of this connection is held
        if self._held is not None:  # its body may never come: the app's shutdown guard answers it in time
            self._to_app(self._held)
        super().shutdown()

    def keep(self, task: asyncio.Task[None]) -> None:
        """Track ``task`` (answering a held request) as uvicorn tracks request tasks: shutdown waits for it."""
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def write_answer(
        self, cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        """Write a complete response for ``cycle`` as uvicorn's ``send`` does (its default headers first;
        ``Connection: close`` and the close when the connection is not kept alive); True when written, False
        when the client has gone (nothing written). The caller then calls ``cycle.on_response()``.

        Raises:
            RuntimeError: a header name or value is not valid; nothing is written then."""
        if cycle.disconnected or cycle.response_complete:
            return False
        content = [STATUS_LINE[status]]
        closing = False
        for name, value in (*self.server_state.default_headers, *headers):
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                raise RuntimeError(f"invalid response header {name!r}")
            name = name.lower()
            if name == b"connection" and b"close" in [token.strip().lower() for token in value.split(b",")]:
                cycle.keep_alive, closing = False, True
            content += [name, b": ", value, b"\r\n"]
        if not cycle.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        content += [b"\r\n", body]
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self.transport.write(b"".join(content))
        if not cycle.keep_alive:
            self.transport.close()
        return True


def why_off(app: Any) -> str | None:
    """Why the protocol path cannot take any request of the app uvicorn serves (``protocol_path_of``'s app),
    in words for the start-up log; None when it may. (Per request it also needs the conditions of the module's
    docstring.)"""
    if "_start_asgi_task" not in vars(HttpToolsProtocol):
        return "this uvicorn has no HttpToolsProtocol._start_asgi_task (uvicorn 0.45 or later has it)"
    path, window = _served(app)
    if path is None:
        return f"uvicorn serves the app inside {type(app).__name__} (LOG_LEVEL=trace adds its message logger)"
    if protocol_path_of(app) is None:
        timeout = path.parts.settings.predict_timeout_seconds
        return (
            f"PREDICT_TIMEOUT_SECONDS={timeout:g} is not under the shutdown's answer window ({window:g} s), in "
            "which a queued request must be answered: set it lower"
        )
    settings = path.parts.settings
    if not settings.microbatch_enabled:
        return "micro-batching is off (MICROBATCH_ENABLED=false)"
    if settings.microbatch_max_rows < 2:
        return "MICROBATCH_MAX_ROWS=1 (no request is gathered with another): set it to 2 or more"
    if not path._only_edge_middleware():
        return "the app has middleware besides EdgeMiddleware, which must see every request"
    return None
