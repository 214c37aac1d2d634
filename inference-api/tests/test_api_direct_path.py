"""POST /predict and /predict/batch take the direct path (``inference_api.direct``), past the framework's
per-request layers; whatever is sent, the answer must be the one FastAPI's full path gives (real registry,
real model, the same app answering both ways)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apisupport import Registry, body_without_id, settings_for, wait_until
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_api.app import create_app
from inference_api.direct import DirectRoutes, direct_endpoints
from inference_api.middleware import Receive, Scope, Send
from readmission import schema

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
MAX_BATCH = 5


class Counted:
    """An ASGI app that counts the requests it is given (by method and path) and passes them on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


FRAMEWORK = {"X-Test-Path": "framework"}  # a request with this header is given to the framework's stack alone


@pytest.fixture(scope="module")
def client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app as served (direct path); a request with ``FRAMEWORK`` headers takes the same app's framework stack
    alone (FastAPI's full path). One client: the app's parts live on its event loop."""
    folder: Path = tmp_path_factory.mktemp("direct")
    app = create_app(settings_for(registry.uri, f"sqlite:///{folder / 'log.db'}", max_batch_size=MAX_BATCH))

    async def either(scope: Scope, receive: Receive, send: Send) -> None:
        stack = app.middleware_stack
        if scope["type"] == "http" and (b"x-test-path", b"framework") in scope["headers"]:
            assert isinstance(stack, DirectRoutes)
            scope["app"] = app
            await stack.app.app(scope, receive, send)  # past the counter: not a request the app routed
        else:
            await app(scope, receive, send)

    with TestClient(either, raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        stack = app.middleware_stack
        assert isinstance(stack, DirectRoutes)
        stack.app = Counted(stack.app)
        c.app_under_test = app  # type: ignore[attr-defined]
        yield c


def test_prediction_posts_skip_the_framework_and_everything_else_takes_it(client: TestClient) -> None:
    direct = client
    framework = client.app_under_test.middleware_stack.app  # type: ignore[attr-defined]
    framework.seen.clear()
    assert direct.post("/predict", json=EXAMPLE).status_code == 200
    assert direct.post("/predict/batch", json={"encounters": [EXAMPLE]}).status_code == 200
    assert direct.post("/predict", content=b"{").status_code == 422  # not JSON: the error map's answer
    assert framework.seen == []
    assert direct.get("/predict").status_code == 405  # another method: FastAPI's own answer
    assert direct.get("/health/live").status_code == 200
    assert direct.post("/predict/", json=EXAMPLE, follow_redirects=False).status_code == 307  # FastAPI redirects
    assert framework.seen == [("GET", "/predict"), ("GET", "/health/live"), ("POST", "/predict/")]


def _requests_answered(client: TestClient, status: int) -> float:
    """``inference_requests_total`` of POST /predict with ``status`` (0 when none was counted)."""
    line = f'inference_requests_total{{endpoint="/predict",method="POST",status="{status}"}} '
    found = [row for row in client.get("/metrics").text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_an_unexpected_error_on_the_direct_path_is_the_error_maps_500_logged_and_counted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stack = client.app_under_test.middleware_stack  # type: ignore[attr-defined]

    async def broken(_request: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setitem(stack.routes, "/predict", broken)
    before = _requests_answered(client, 500)
    with caplog.at_level(logging.ERROR):
        response = client.post("/predict", json=EXAMPLE, headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "message": "unexpected error; quote the request id when reporting it",
        "request_id": "trace-me",
    }
    assert response.headers["x-request-id"] == "trace-me"
    assert any("trace-me" in r.getMessage() and r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    assert _requests_answered(client, 500) == before + 1


@pytest.mark.parametrize("failure", ["raises", "returns None"])
def test_a_failing_error_handler_falls_back_to_the_500_of_the_error_map(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    """Review of #24: on the framework path Starlette's ServerErrorMiddleware answered a handler that failed;
    on the direct path it must not reach the server as a bare text/plain 500 without the request id."""
    handlers = client.app_under_test.exception_handlers  # type: ignore[attr-defined]
    wanted = next(cls for cls in handlers if isinstance(cls, type) and cls.__name__ == "InvalidBodyError")

    async def bad_handler(_request: Any, _exc: Exception) -> Any:
        if failure == "raises":
            raise ValueError("the handler broke")
        return None

    monkeypatch.setitem(handlers, wanted, bad_handler)
    with caplog.at_level(logging.ERROR):
        response = client.post("/predict", content=b"{", headers={"X-Request-ID": "handler-broke"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.json()["request_id"] == response.headers["x-request-id"] == "handler-broke"
    if failure == "raises":
        assert "the error handler for InvalidBodyError failed" in caplog.text


def test_a_handler_registered_for_a_status_code_answers_that_http_exception(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of #24: Starlette looks an HTTPException's handler up by its status code first; the direct path
    looked at classes only. A body that is not UTF-8 raises the 400 HTTPException."""
    handlers = client.app_under_test.exception_handlers  # type: ignore[attr-defined]

    async def on_400(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"mine": str(getattr(exc, "detail", ""))}, status_code=400)

    monkeypatch.setitem(handlers, 400, on_400)
    response = client.post("/predict", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"mine": "the request body is not UTF-8 text"}


def _needs_token() -> None:
    """A dependency (an auth check, say) that only FastAPI's full path would run."""


async def _takes_request(request: Request) -> Any:
    return None


async def _takes_query(request: Request, top: int = 3) -> Any:
    return None


@pytest.mark.parametrize(
    ("route", "named"),
    [
        (APIRoute("/p", _takes_request, methods=["POST"], dependencies=[Depends(_needs_token)]), "dependencies"),
        (APIRoute("/p", _takes_query, methods=["POST"]), "dependencies or parameters"),
        (APIRoute("/p", _takes_request, methods=["GET"]), "POST API routes only"),
        (APIRoute("/p", _takes_request, methods=["POST", "PUT"]), "POST API routes only"),
    ],
    ids=["a dependency", "a query parameter", "GET", "POST and PUT"],
)
def test_the_direct_path_refuses_a_route_it_could_not_serve_as_fastapi_does(route: APIRoute, named: str) -> None:
    """Review of #24: the direct path calls an endpoint with the Request alone; a dependency added to a
    prediction route (an auth check) would silently be skipped, so such a route is refused at start-up."""
    with pytest.raises(TypeError, match=named):
        direct_endpoints([route])
    assert direct_endpoints([APIRoute("/p", _takes_request, methods=["POST"])]) == {"/p": _takes_request}


def test_a_middleware_added_to_the_app_applies_to_the_direct_path(registry: Registry, tmp_path: Path) -> None:
    """Review of #24: the direct path built its own edge middleware, so one added later would have missed it."""

    class Stamp:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def stamped(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-stamp", b"yes")]
                await send(message)

            await self.app(scope, receive, stamped)

    app = create_app(settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}"))
    app.add_middleware(Stamp)
    with TestClient(app) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        for response in (c.post("/predict", json=EXAMPLE), c.post("/predict", content=b"{"), c.get("/model")):
            assert response.headers.get("x-stamp") == "yes", response.status_code
        assert isinstance(app.middleware_stack, DirectRoutes)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.text(max_size=8), st.lists(st.integers(), max_size=2)
)
_ENCOUNTERS = st.one_of(
    st.just(EXAMPLE),
    st.builds(lambda k, v: {**EXAMPLE, k: v}, st.sampled_from(sorted(EXAMPLE)), _VALUES),
    st.builds(lambda k: {f: v for f, v in EXAMPLE.items() if f != k}, st.sampled_from(sorted(EXAMPLE))),
    st.builds(lambda v: {**EXAMPLE, "unknown_field": v}, _VALUES),
)
_BODIES = st.one_of(
    _ENCOUNTERS.map(lambda e: json.dumps(e).encode()),
    st.lists(_ENCOUNTERS, max_size=MAX_BATCH + 1).map(lambda es: json.dumps({"encounters": es}).encode()),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"encounters": 3}', b"\xff\xfe", b'{"age": "[70-80)", "age": 1}']),
)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(["application/json", "text/plain", "application/problem+json", "bad"]),
        "Content-Encoding": st.sampled_from(["gzip", "identity"]),
        "X-Request-ID": st.sampled_from(["abc-123", "no spaces allowed", "x" * 65]),
    },
)
_QUERIES = st.sampled_from(["", "explain=true", "explain=true&explain_top=2", "explain_top=abc", "explain=maybe"])


def _comparable(response: Any) -> tuple[int, Any, dict[str, str]]:
    """Status, body (JSON without the request id, whose value is random unless the client sent one) and the
    headers but those that differ between two answers (request id, length, date)."""
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length", "date")}
    return response.status_code, body_without_id(response), headers


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/predict", "/predict/batch"]), body=_BODIES, headers=_HEADERS, query=_QUERIES)
def test_any_request_gets_the_answer_fastapis_full_path_gives(
    client: TestClient, path: str, body: bytes, headers: dict[str, str], query: str
) -> None:
    url = f"{path}?{query}" if query else path
    framework = client.app_under_test.middleware_stack.app  # type: ignore[attr-defined]
    framework.seen.clear()
    ours = client.post(url, content=body, headers=headers)
    assert framework.seen == []  # the direct path answered
    theirs = client.post(url, content=body, headers={**headers, **FRAMEWORK})
    assert _comparable(ours) == _comparable(theirs)
    assert ours.status_code < 500, ours.text
    if headers.get("X-Request-ID") == "abc-123":  # a well-formed id is kept, in the header and the body
        assert ours.headers["x-request-id"] == theirs.headers["x-request-id"] == "abc-123"
        assert ours.json()["request_id"] == "abc-123"
    else:
        assert len(ours.headers["x-request-id"]) == 32
