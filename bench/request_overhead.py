"""What the request path's own machinery costs per request, each design beside its alternative, in one run:

    python bench/request_overhead.py --rounds 7 --rps 5042.8

1. The per-request timeout (PREDICT_TIMEOUT_SECONDS) on the gathered path: a bare ``await`` of an
   already-scheduled future (no timeout), ``asyncio.wait_for`` around it (the design before), and what
   ``inference_api.batcher`` does now (a deque append per request, scanned by one watchdog task).
2. Reaching the app's parts in an endpoint: a FastAPI dependency (``Depends``) against reading
   ``request.app.state`` (what the prediction routes do), through a bare FastAPI app called as ASGI.
3. The same endpoint reached through an included ``APIRouter`` against a route added to the app itself
   (what ``inference_api.app`` does with the routers' routes).
4. The shutdown wrapper ``inference_api.shutdown.AnswerBeforeExit`` around that app, against none.

Prints microseconds per call (median of the rounds) and each extra cost as a share of one request's time
on the event loop at 64 clients (1 / ``--rps``, the latest ``bench/api.py`` figure).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from inference_api.shutdown import AnswerBeforeExit

N = 5_000


async def _awaits(how: str) -> float:
    loop = asyncio.get_running_loop()
    watched: deque[tuple[float, asyncio.Future[int]]] = deque()
    started = time.perf_counter()
    for _ in range(N):
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 1)
        if how == "wait_for":
            await asyncio.wait_for(future, 10.0)
        else:
            if how == "watchdog":
                watched.append((loop.time() + 10.0, future))
            await future
        while len(watched) > 1_000:  # the watchdog's scan, every 0.25 s in the service
            watched.popleft()
    return (time.perf_counter() - started) / N * 1e6


def _app() -> FastAPI:
    app = FastAPI()
    app.state.parts = object()

    async def parts(request: Request) -> Any:
        return request.app.state.parts

    @app.post("/direct")
    async def direct(request: Request) -> Response:
        assert request.app.state.parts is not None
        return Response(await request.body())

    @app.post("/dependency")
    async def dependency(request: Request, parts: Annotated[Any, Depends(parts)]) -> Response:
        assert parts is not None
        return Response(await request.body())

    router = APIRouter()

    @router.post("/included")
    async def included(request: Request) -> Response:
        assert request.app.state.parts is not None
        return Response(await request.body())

    app.include_router(router)
    return app


async def _calls(app: Callable[..., Awaitable[None]], path: str) -> float:
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 9000), "root_path": ""}  # fmt: skip
    message = {"type": "http.request", "body": b"{}", "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_message: Any) -> None:
        return None

    started = time.perf_counter()
    for _ in range(N):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / N * 1e6


async def _asgi(how: str) -> float:
    app = _app()
    if how == "wrapped":
        return await _calls(AnswerBeforeExit(app, 20.0), "/direct")
    return await _calls(app, {"dependency": "/dependency", "router": "/included"}.get(how, "/direct"))


def _report(title: str, times: dict[str, list[float]], per_request: float) -> None:
    base = statistics.median(next(iter(times.values())))
    print(title)
    for how, found in times.items():
        extra = statistics.median(found) - base
        print(f"  {how:10s} {statistics.median(found):7.2f} us   extra {extra:6.2f} us = {extra / per_request:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rps", type=float, default=5042.8, help="requests/s of the API at 64 clients")
    args = parser.parse_args()
    timeouts: dict[str, list[float]] = {"bare": [], "wait_for": [], "watchdog": []}
    routes: dict[str, list[float]] = {"direct": [], "dependency": [], "router": [], "wrapped": []}
    for _ in range(args.rounds):
        for how, found in timeouts.items():
            found.append(asyncio.run(_awaits(how)))
        for how, found in routes.items():
            found.append(asyncio.run(_asgi(how)))
    per_request = 1e6 / args.rps
    print(f"median of {args.rounds} rounds; one request at 64 clients takes {per_request:.0f} us of the event loop")
    _report("timeout per gathered request (bare await = none):", timeouts, per_request)
    _report("endpoint plumbing (direct = request.app.state, no wrapper):", routes, per_request)


if __name__ == "__main__":
    main()
