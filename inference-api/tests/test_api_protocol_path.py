"""An ordinary POST /predict is answered from uvicorn's protocol (``inference_api.protocol_path``); whatever is
sent, and however the bytes arrive, the answer must be the one the app's ASGI path gives, and what the
request leaves behind (log row, metrics) the same (real registry, real model, real uvicorn servers, real
sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from apisupport import ApiServer, Registry, body_without_id, settings_for, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from starlette.middleware.gzip import GZipMiddleware
from uvicorn.middleware.message_logger import MessageLoggerMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inference_api.app import create_app
from inference_api.batcher import PredictionTimeoutError
from inference_api.coalesce import CoalescingHttpProtocol
from inference_api.model_manager import ModelSource
from inference_api.protocol_path import ProtocolPath, protocol_path_of, why_off
from inference_api.shutdown import AnswerBeforeExit
from readmission import schema
from readmission.serving import Predictor

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
BODY = json.dumps(EXAMPLE).encode()


class Taken:
    """Records, per request the protocol path was asked to hold, whether it held it (``held``), and per request
    it held until its body was in, whether it queued it (``queued``, True) or gave it to the app."""

    def __init__(self, path: ProtocolPath) -> None:
        self.held: list[bool] = []
        self.queued: list[bool] = []
        hold, try_enqueue = path.hold, path.try_enqueue

        def recorded_hold(cycle: Any, app: Any) -> Any:
            held = hold(cycle, app)
            self.held.append(held is not None)
            return held

        def recorded_try_enqueue(held: Any, protocol: Any) -> bool:
            taken = try_enqueue(held, protocol)
            self.queued.append(taken)
            return taken

        path.hold, path.try_enqueue = recorded_hold, recorded_try_enqueue  # type: ignore[method-assign]

    def clear(self) -> None:
        self.held.clear()
        self.queued.clear()


class ControlledPredictor(Predictor):
    """A model call that raises while ``broken`` is set, and waits for ``release`` while ``blocking`` is set
    (setting ``entered``), once the model has loaded and proved itself."""

    broken = threading.Event()
    blocking = threading.Event()
    entered = threading.Event()
    release = threading.Event()
    timing_out = threading.Event()  # when released: the batcher's timeout error, as its watchdog sets it

    def predict_proba(self, rows: Sequence[Any]) -> np.ndarray:
        if self.broken.is_set():
            raise ValueError("the model broke")
        if self.blocking.is_set():
            self.entered.set()
            self.release.wait(60)
            if self.timing_out.is_set():
                raise PredictionTimeoutError("no answer within PREDICT_TIMEOUT_SECONDS")
        return super().predict_proba(rows)

    @classmethod
    def reset(cls) -> None:
        for event in (cls.broken, cls.blocking, cls.entered, cls.release, cls.timing_out):
            event.clear()


class ControlledSource(ModelSource):
    def predictor(self, model: Any) -> Predictor:
        return ControlledPredictor(model)


def _server(
    registry: Registry, folder: Path, protocol_path: bool, controlled: bool = False, **overrides: Any
) -> ApiServer:
    settings = settings_for(registry.uri, f"sqlite:///{folder / 'log.db'}", **overrides)
    source = (lambda: ControlledSource(registry.uri, settings.model_name, settings.model_alias)) if controlled else None
    server = ApiServer(settings, create_app(settings, source))
    if not protocol_path:
        server.server.config.http = CoalescingHttpProtocol  # the ASGI path for every request
    return server


@pytest.fixture(scope="module")
def servers(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, ApiServer]]:
    """(protocol path, ASGI path only): two servers of the same champion."""
    ours = _server(registry, tmp_path_factory.mktemp("protocol"), True)
    theirs = _server(registry, tmp_path_factory.mktemp("asgi"), False)
    with ours, theirs:
        for server in (ours, theirs):
            wait_until(lambda s=server: httpx.get(s.url + "/health/ready").status_code == 200, what="the model")
        ours.taken = Taken(ours.app.state.protocol_path)  # type: ignore[attr-defined]
        yield ours, theirs


def _comparable(response: httpx.Response) -> tuple[int, Any, list[tuple[str, str]]]:
    """Status, body without the request id (random unless the client sent one), and the headers in order
    without the values that differ between two answers (request id, date, length)."""
    varying = ("x-request-id", "date", "content-length")
    headers = [(k, "..." if k in varying else v) for k, v in response.headers.multi_items()]
    return response.status_code, body_without_id(response), headers


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.text(max_size=8))
_BODIES = st.one_of(
    st.just(BODY),
    st.builds(lambda k, v: json.dumps({**EXAMPLE, k: v}).encode(), st.sampled_from(sorted(EXAMPLE)), _VALUES),
    st.builds(lambda k: json.dumps({f: v for f, v in EXAMPLE.items() if f != k}).encode(), st.sampled_from(sorted(EXAMPLE))),
    st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"age": "[70-80)", "age": 1}', BODY + b" " * 20_000]),
)  # fmt: skip
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", "application/problem+json", "bad"]
        ),
        "Content-Encoding": st.sampled_from(["gzip", "identity"]),
        "X-Request-ID": st.sampled_from(["abc-123", "no spaces allowed", "x" * 65]),
    },
)
_QUERIES = st.sampled_from(["", "explain=true", "explain_top=abc", "x=1"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES, headers=_HEADERS, query=_QUERIES)
def test_any_predict_request_gets_the_answer_of_the_asgi_path(
    servers: tuple[ApiServer, ApiServer], body: bytes, headers: dict[str, str], query: str
) -> None:
    ours, theirs = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    path = f"/predict?{query}" if query else "/predict"
    mine = httpx.post(ours.url + path, content=body, headers=headers)
    other = httpx.post(theirs.url + path, content=body, headers=headers)
    assert _comparable(mine) == _comparable(other)
    assert mine.status_code < 500, mine.text
    ordinary = not query and len(body) <= 16 * 1024 and headers.get("Content-Encoding", "identity") == "identity"
    ordinary = ordinary and headers.get("Content-Type", "application/json").startswith("application/json")
    assert taken.queued == ([mine.status_code == 200] if ordinary else [])
    if headers.get("X-Request-ID") == "abc-123":  # a well-formed id is kept; another is replaced
        assert mine.headers["x-request-id"] == "abc-123"
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", mine.headers["x-request-id"])
    if mine.status_code == 200:
        assert mine.json()["request_id"] == mine.headers["x-request-id"]


def _raw(port: int, data: list[bytes], pause: float = 0.0, answers: int = 1) -> bytes:
    """Send ``data`` piece by piece (``pause`` seconds apart) on one connection; read until ``answers``
    complete answers (each with a Content-Length) are in or the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for piece in data:
            sock.sendall(piece)
            time.sleep(pause)
        received = b""
        while _complete(received) < answers and (chunk := sock.recv(65536)):
            received += chunk
    return received


def _complete(received: bytes) -> int:
    """How many whole answers ``received`` holds."""
    count, rest = 0, received
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        if len(rest) < length:
            break
        rest, count = rest[length:], count + 1
    return count


def _request(body: bytes = BODY, extra: bytes = b"") -> bytes:
    head = b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, len(_request()) - 1), max_size=4, unique=True).map(sorted))
def test_a_request_in_pieces_is_answered_as_a_whole_one(servers: tuple[ApiServer, ApiServer], cuts: list[int]) -> None:
    """Headers and body arriving in several segments, at any byte (a header split in two included)."""
    ours, _ = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    whole = _request()
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    answer = _raw(ours.port, pieces, pause=0.02)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["predicted_class"] in ("NO", ">30", "<30")
    assert taken.queued == [True]


def test_pipelined_requests_are_answered_in_order_on_one_connection(servers: tuple[ApiServer, ApiServer]) -> None:
    """Two predictions, an invalid one (the app answers it), a GET, and a prediction whose body comes later
    (started while its body is still arriving), on one connection."""
    ours, _ = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    bad = json.dumps({**EXAMPLE, "age": "old"}).encode()
    packet = _request() + _request(extra=b"x-request-id: second\r\n") + _request(bad)
    packet += b"GET /health/live HTTP/1.1\r\nhost: t\r\n\r\n" + _request(extra=b"x-request-id: last\r\n")
    late = len(packet) - len(BODY) // 2  # the last request's body, half of it sent after a pause
    received = _raw(ours.port, [packet[:late], packet[late:]], pause=0.3, answers=5)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", received)
    assert statuses == [b"200", b"200", b"422", b"200", b"200"]
    ids = re.findall(rb"x-request-id: (\S+)", received)
    assert ids[1] == b"second" and ids[4] == b"last"
    assert received.count(b'"predicted_class"') == 3
    assert taken.queued == [True, True, False, True]  # the invalid one was held, then given to the app


def test_connection_close_and_http_1_0_get_the_answer_then_the_close(servers: tuple[ApiServer, ApiServer]) -> None:
    ours, _ = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    for request in (_request(extra=b"connection: close\r\n"), _request().replace(b"HTTP/1.1", b"HTTP/1.0", 1)):
        received = _raw(ours.port, [request], answers=99)  # read until the server closes
        assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nconnection: close\r\n" in received
        assert _complete(received) == 1
    assert taken.queued == [True, True]


def _answer_of(received: bytes) -> tuple[bytes, Any]:
    """The status line of a raw answer and its body (JSON without ``request_id``, else the bytes)."""
    head, body = received.split(b"\r\n\r\n", 1)
    try:
        parsed = json.loads(body)
    except ValueError:
        return head.split(b"\r\n", 1)[0], body
    if isinstance(parsed, dict):
        parsed.pop("request_id", None)
    return head.split(b"\r\n", 1)[0], parsed


_CHUNKED = b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
_OUT_OF_THE_COMMON_CASE = {
    # chunked: no Content-Length (llhttp refuses a request with both, 400, before anything is held)
    "chunked body": _CHUNKED + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
    "no content-length": b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\r\n",
    "content-type twice": _request(extra=b"content-type: application/json\r\n"),
    "x-request-id twice": _request(extra=b"x-request-id: first\r\nx-request-id: second\r\n"),
    "content-encoding twice": _request(extra=b"content-encoding: identity\r\ncontent-encoding: identity\r\n"),
}


@pytest.mark.parametrize("case", sorted(_OUT_OF_THE_COMMON_CASE))
def test_a_request_out_of_the_common_case_is_not_held_and_gets_the_asgi_paths_answer(
    servers: tuple[ApiServer, ApiServer], case: str
) -> None:
    """What httpx never sends (the generated test's client): each goes to the app, which answers it."""
    ours, theirs = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    request = _OUT_OF_THE_COMMON_CASE[case]
    mine, other = (_answer_of(_raw(server.port, [request])) for server in (ours, theirs))
    assert mine == other
    assert taken.held == [False] and taken.queued == []


def test_expect_100_continue_is_not_held_and_gets_its_continue(servers: tuple[ApiServer, ApiServer]) -> None:
    """Held, it would never get its ``100 Continue`` (sent when the app first reads the body): the client
    would wait, then send its body anyway (curl waits a second)."""
    ours, _ = servers
    taken: Taken = ours.taken  # type: ignore[attr-defined]
    taken.clear()
    head, body = _request(extra=b"expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    with socket.create_connection(("127.0.0.1", ours.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        received = b""
        while _complete(received) < 1 and (chunk := sock.recv(65536)):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert taken.held == [False] and taken.queued == []


def test_uvicorns_own_503_at_its_concurrency_limit_is_never_held(registry: Registry, tmp_path: Path) -> None:
    """At ``limit_concurrency`` uvicorn answers a request with its own 503 app: that answer is uvicorn's."""
    server = _server(registry, tmp_path, True)
    server.server.config.limit_concurrency = 2  # reached with two connections open
    with server:
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200, what="the model")
        taken = Taken(server.app.state.protocol_path)
        with socket.create_connection(("127.0.0.1", server.port)):
            received = _raw(server.port, [_request()])
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert taken.held == [] and taken.queued == []


def _stopping(server: ApiServer) -> bool:
    """Whether uvicorn has asked every open connection of ``server`` to stop (its graceful shutdown began)."""
    return all(getattr(c, "_stopping", False) for c in list(server.server.server_state.connections))


@pytest.mark.parametrize("status", [200, 504])
def test_a_request_queued_when_the_server_stops_is_answered_with_connection_close(
    registry: Registry, tmp_path: Path, status: int
) -> None:
    """Queued when uvicorn's graceful shutdown begins: its answer (or its error's, here a model call that
    times out: 504) still comes, then the close, as uvicorn answers a request in flight."""
    server = _server(registry, tmp_path, True, True)
    with server:
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200, what="the model")
        taken = Taken(server.app.state.protocol_path)
        ControlledPredictor.reset()  # a test before may have left ``release`` set
        ControlledPredictor.blocking.set()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(_request())
                assert ControlledPredictor.entered.wait(60), "the model call never began"
                server.server.should_exit = True
                wait_until(lambda: _stopping(server), what="the graceful shutdown")
                if status == 504:
                    ControlledPredictor.timing_out.set()
                ControlledPredictor.release.set()
                received = b""
                while chunk := sock.recv(65536):  # until the server closes
                    received += chunk
        finally:
            ControlledPredictor.release.set()  # the model call still waiting, if any, returns
            ControlledPredictor.timing_out.clear()
    assert received.startswith(b"HTTP/1.1 %d " % status) and b"\r\nconnection: close\r\n" in received
    assert _complete(received) == 1 and taken.queued == [True]


def test_an_error_answer_cut_short_by_the_graceful_timeout_is_a_503_with_connection_close(
    registry: Registry, tmp_path: Path
) -> None:
    """uvicorn cancels what is still running at its graceful timeout: an error answer still being made then
    becomes the shutdown guard's 503, and the connection closes (it was left open, counted but unanswered)."""
    server = _server(registry, tmp_path, True, True)
    answering = threading.Event()

    async def slow_handler(request: Any, exc: Exception) -> Any:
        answering.set()
        await asyncio.sleep(120)

    server.app.add_exception_handler(ValueError, slow_handler)
    server.server.config.timeout_graceful_shutdown = 1
    with server:
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200, what="the model")
        ControlledPredictor.broken.set()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(_request())
                assert answering.wait(60), "the error handler was never called"
                server.server.should_exit = True
                received = b""
                while chunk := sock.recv(65536):  # until the server closes
                    received += chunk
        finally:
            ControlledPredictor.reset()
    assert received.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close\r\n" in received
    assert _answer_of(received)[1]["error"] == "shutting_down"
    assert server.app.state.components.in_flight.count == 0  # answered once, counted once


_LOGGED = "request_id, item, endpoint, model_name, model_version, inputs, predicted_class, probability_no, " \
    "probability_after_30, probability_within_30, risk_band, encounter_id"  # fmt: skip


def _logged(folder: Path) -> list[Any]:
    """The prediction-log rows in ``folder``'s log.db (none while the writer has not made its table)."""
    try:
        with create_engine(f"sqlite:///{folder / 'log.db'}").connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT {_LOGGED} FROM prediction_log ORDER BY request_id"))]
    except OperationalError:
        return []


def _counted(metrics: str) -> list[str]:
    """The /predict request and prediction samples of a /metrics text (not the durations, not the readiness
    polls: they vary)."""
    wanted = (
        'inference_requests_total{endpoint="/predict"',
        "inference_predictions_total{",
        "inference_requests_in_flight ",
    )
    return sorted(line for line in metrics.splitlines() if line.startswith(wanted))


def test_each_answer_is_logged_and_counted_as_on_the_asgi_path(registry: Registry, tmp_path: Path) -> None:
    """The same requests to both paths: the same log rows (but their ids and times) and request metrics."""
    seen = []
    for protocol_path in (True, False):
        folder = tmp_path / str(protocol_path)
        folder.mkdir()
        server = _server(registry, folder, protocol_path, prediction_log_flush_seconds=0.2)
        with server:
            wait_until(lambda s=server: httpx.get(s.url + "/health/ready").status_code == 200, what="the model")
            taken = Taken(server.app.state.protocol_path)
            for i, encounter in enumerate(schema.EXAMPLE_ENCOUNTERS.values()):
                body = json.dumps({**encounter, "encounter_id": 1000 + i}).encode()
                answer = httpx.post(server.url + "/predict", content=body, headers={"x-request-id": f"r{i}"})
                assert answer.status_code == 200, answer.text
            metrics = httpx.get(server.url + "/metrics").text
            wait_until(lambda f=folder: len(_logged(f)) == len(schema.EXAMPLE_ENCOUNTERS), what="the log rows")
        assert taken.queued == ([True] * len(schema.EXAMPLE_ENCOUNTERS) if protocol_path else [])
        seen.append((_logged(folder), _counted(metrics)))
    assert seen[0] == seen[1]
    assert [row[0] for row in seen[0][0]] == [f"r{i}" for i in range(len(schema.EXAMPLE_ENCOUNTERS))]
    assert 'inference_requests_total{endpoint="/predict",method="POST",status="200"} 3.0' in seen[0][1]


def test_a_failing_model_call_is_answered_and_logged_as_on_the_asgi_path(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's handler answers an error of a queued request: the error map's 500, logged with its traceback."""
    answers = []
    for protocol_path in (True, False):
        folder = tmp_path / str(protocol_path)
        folder.mkdir()
        caplog.clear()
        with (
            caplog.at_level(logging.ERROR, logger="inference_api"),
            _server(registry, folder, protocol_path, True) as server,
        ):
            wait_until(lambda s=server: httpx.get(s.url + "/health/ready").status_code == 200, what="the model")
            taken = Taken(server.app.state.protocol_path)
            ControlledPredictor.broken.set()
            try:
                answer = httpx.post(server.url + "/predict", content=BODY, headers={"x-request-id": "broken"})
            finally:
                ControlledPredictor.reset()
            metrics = httpx.get(server.url + "/metrics").text
        assert taken.queued == ([True] if protocol_path else [])
        failures = [r for r in caplog.records if "broken" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info is not None, [r.getMessage() for r in caplog.records]
        assert "the model broke" in "".join(traceback.format_exception(*failures[0].exc_info))
        answers.append((_comparable(answer), answer.headers["x-request-id"], _counted(metrics)))
    assert answers[0] == answers[1]
    assert answers[0][0][:2] == (
        500,
        {"error": "internal_error", "message": "unexpected error; quote the request id when reporting it"},
    )


def test_a_client_gone_before_its_answer_is_still_logged(registry: Registry, tmp_path: Path) -> None:
    """(A client gone before its whole body is counted 499: test_api_client_gone, through this path too.)"""
    server = _server(registry, tmp_path, True, prediction_log_flush_seconds=0.2)
    with server:
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200, what="the model")
        taken = Taken(server.app.state.protocol_path)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_request(extra=b"x-request-id: gone\r\n"))
        wait_until(lambda: [r[0] for r in _logged(tmp_path)] == ["gone"], what="the gone client's row")
        assert httpx.post(server.url + "/predict", content=BODY).status_code == 200  # still serving
        metrics = httpx.get(server.url + "/metrics").text
    assert taken.queued == [True, True]
    assert "inference_requests_in_flight 1.0" in metrics  # the scrape itself: nothing left counted


def test_an_app_with_another_middleware_takes_the_asgi_path(registry: Registry, tmp_path: Path) -> None:
    """A middleware added to the app must see every request: no request is held for the protocol path."""
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    app = create_app(settings)
    seen: list[str] = []

    class Seen:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope.get("path", ""))
            await self.inner(scope, receive, send)

    app.add_middleware(Seen)
    server = ApiServer(settings, app)
    with server:
        wait_until(lambda: httpx.get(server.url + "/health/ready").status_code == 200, what="the model")
        taken = Taken(app.state.protocol_path)
        assert httpx.post(server.url + "/predict", content=BODY).status_code == 200
    assert taken.queued == [] and seen.count("/predict") == 1


def test_the_path_is_off_when_a_prediction_may_outlast_the_shutdowns_answer_window(
    registry: Registry, tmp_path: Path
) -> None:
    for timeout, expected in ((10.0, True), (20.0, False), (30.0, False)):
        settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", predict_timeout_seconds=timeout)
        app = create_app(settings)
        assert (protocol_path_of(AnswerBeforeExit(app, 20.0)) is not None) is expected
        assert protocol_path_of(app) is app.state.protocol_path  # no shutdown window to keep
    assert protocol_path_of(object()) is None


def test_the_start_up_log_says_why_the_path_is_off(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``why_off`` (logged by ``__main__`` at start-up): None when the path may take requests, else the cause,
    naming the setting to change; uvicorn without the method the path overrides (before 0.45) included."""

    def reason(middleware: bool = False, **overrides: Any) -> str | None:
        app = create_app(settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", **overrides))
        if middleware:
            app.add_middleware(GZipMiddleware)
        return why_off(AnswerBeforeExit(app, 20.0))

    assert reason() is None
    assert reason(microbatch_enabled=False) == "micro-batching is off (MICROBATCH_ENABLED=false)"
    assert "MICROBATCH_MAX_ROWS=1 (no request is gathered with another)" in (reason(microbatch_max_rows=1) or "")
    assert "PREDICT_TIMEOUT_SECONDS=25 is not under the shutdown's answer window (20 s)" in (
        reason(predict_timeout_seconds=25.0) or ""
    )
    assert "middleware" in (reason(middleware=True) or "")
    app = create_app(settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}"))
    assert "MessageLoggerMiddleware" in (why_off(MessageLoggerMiddleware(AnswerBeforeExit(app, 20.0))) or "")
    monkeypatch.delattr(HttpToolsProtocol, "_start_asgi_task")
    assert "uvicorn 0.45" in (reason() or "")
