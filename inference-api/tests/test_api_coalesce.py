"""One socket write per response (``inference_api.coalesce``), and nothing lost or reordered on the way: real
uvicorn servers on uvloop, real sockets, the write system calls counted by the kernel (/proc/<pid>/io)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apisupport import free_port

# A tiny ASGI app under uvicorn (uvloop) with the protocol named on the command line: "coalescing" (the
# service's) or "httptools" (uvicorn's own). /small answers 2 bytes; /stream 64 chunks of 16 KiB; /big one
# 3 MiB body; /close a small body with Connection: close; /echo the request's body. /first and /second wait
# until /release wakes both in one loop step (as a micro-batch's results wake their requests): /first answers
# at once; /second then holds the loop until the client has /first's answer (the file `first-arrived` beside
# the script appears) or 20 s pass, and answers which came first.
SERVER = textwrap.dedent(
    """
    import asyncio
    import sys
    import time
    from pathlib import Path
    import uvicorn
    from inference_api.coalesce import CoalescingHttpProtocol

    CHUNK = bytes(range(256)) * 64  # 16 KiB
    ARRIVED = Path(__file__).with_name("first-arrived")
    waiting = {}

    async def one_step(path):
        if path == "/release":
            while len(waiting) < 2:
                await asyncio.sleep(0.01)
            waiting["/first"].set_result(None)  # woken first, whichever arrived first
            waiting["/second"].set_result(None)
            return b"released"
        waiting[path] = asyncio.get_running_loop().create_future()
        await waiting[path]
        if path == "/first":
            return b"first"
        deadline = time.monotonic() + 20  # a hang guard: the loop is held on purpose
        while not ARRIVED.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return b"first arrived before second was built" if ARRIVED.exists() else b"first held back"

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        headers = [(b"content-type", b"application/octet-stream")]
        if path in ("/first", "/second", "/release"):
            body = await one_step(path)
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(64):
                await send({"type": "http.response.body", "body": bytes([i]) + CHUNK, "more_body": True})
            await send({"type": "http.response.body", "body": b"end", "more_body": False})
            return
        if path == "/echo":  # the request body, read to the end, back
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        else:
            body = {"/big": CHUNK * 192, "/close": b"bye"}.get(path, b"ok")
        headers.append((b"content-length", str(len(body)).encode()))
        if path == "/close":
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    http = CoalescingHttpProtocol if sys.argv[2] == "coalescing" else "httptools"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http=http, log_level="warning")
    """
)
CHUNK = bytes(range(256)) * 64


def _serve(tmp_path: Path, protocol: str) -> Iterator[tuple[str, int]]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), protocol])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/small", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the {protocol} test server did not start") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def coalescing(tmp_path: Path) -> Iterator[tuple[str, int]]:
    yield from _serve(tmp_path, "coalescing")


def _write_calls(pid: int) -> int:
    """Write system calls the process has made so far (write/writev: what uvloop sends a socket with)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscw"])


@pytest.mark.parametrize(("protocol", "low", "high"), [("coalescing", 1.0, 1.1), ("httptools", 1.9, 2.1)])
def test_a_response_is_one_socket_write(tmp_path: Path, protocol: str, low: float, high: float) -> None:
    """The service's protocol sends status line, headers and body in one write; uvicorn's own takes two
    (the control arm: shows the count sees the difference)."""
    server = _serve(tmp_path, protocol)
    url, pid = next(server)
    try:
        with httpx.Client(base_url=url) as client:
            client.get("/small")
            before = _write_calls(pid)
            answers = [client.get("/small") for _ in range(300)]
            per_response = (_write_calls(pid) - before) / len(answers)
        assert all(a.status_code == 200 and a.content == b"ok" for a in answers)
        assert low <= per_response <= high, f"{per_response:.2f} write calls per response with {protocol}"
    finally:
        server.close()


def test_an_answer_leaves_before_the_loop_step_builds_the_next(coalescing: tuple[str, int], tmp_path: Path) -> None:
    """Two requests woken in one loop step: the first's answer reaches the client while the second is still
    being built (held until the end of the step, it would wait for every answer of a micro-batch)."""
    url, _ = coalescing
    answers: dict[str, bytes] = {}

    def ask(path: str) -> None:
        answers[path] = httpx.get(url + path, timeout=60).content
        if path == "/first":
            (tmp_path / "first-arrived").touch()

    clients = [threading.Thread(target=ask, args=(path,)) for path in ("/first", "/second")]
    for client in clients:
        client.start()
    assert httpx.get(url + "/release", timeout=60).content == b"released"
    for client in clients:
        client.join(60)
    assert answers == {"/first": b"first", "/second": b"first arrived before second was built"}


def test_streamed_and_large_bodies_arrive_whole_and_in_order(coalescing: tuple[str, int]) -> None:
    url, _ = coalescing
    with httpx.Client(base_url=url) as client:
        streamed = client.get("/stream")
        big = client.get("/big")
        small = client.get("/small")  # the same kept-alive connection still answers
    assert streamed.content == b"".join(bytes([i]) + CHUNK for i in range(64)) + b"end"
    assert big.content == CHUNK * 192
    assert small.content == b"ok"


def test_connection_close_sends_the_body_before_closing(coalescing: tuple[str, int]) -> None:
    url, _ = coalescing
    answer = httpx.get(url + "/close")
    assert answer.headers["connection"] == "close"
    assert answer.content == b"bye"


def test_pipelined_requests_get_their_answers_in_order(coalescing: tuple[str, int]) -> None:
    """Three requests in one packet: three answers, in request order, on the one connection."""
    url, _ = coalescing
    port = int(url.rsplit(":", 1)[1])
    request = b"GET /%s HTTP/1.1\r\nhost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request % b"small" + request % b"close" + request % b"small")
        received = b""
        while chunk := sock.recv(65536):  # /close ends the connection: the third request gets no answer
            received += chunk
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [a.endswith(body) for a, body in zip(answers, (b"ok", b"bye"), strict=True)] == [True, True]


def test_a_client_gone_mid_stream_leaves_the_server_answering(coalescing: tuple[str, int]) -> None:
    url, _ = coalescing
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        sock.recv(1024)
    # the server wrote into a closed connection; it must go on serving others
    assert httpx.get(url + "/big").content == CHUNK * 192


def test_head_answers_headers_only(coalescing: tuple[str, int]) -> None:
    url, _ = coalescing
    answer = httpx.head(url + "/big")
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(len(CHUNK) * 192)
    assert answer.content == b""


def test_expect_100_continue_gets_the_interim_answer_then_the_response(coalescing: tuple[str, int]) -> None:
    """The client waits for "100 Continue" before it sends the body: the interim line must leave on its own."""
    url, _ = coalescing
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_slow_reader_gets_every_byte(coalescing: tuple[str, int]) -> None:
    """A client that reads 3 MiB in small bites, pausing: the server's writes back off and resume (flow
    control) and nothing is lost."""
    url, _ = coalescing
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        time.sleep(0.3)  # the server fills the socket buffers and holds the rest: it must stop and resume writing
        chunks: list[bytes] = []
        size = 0
        while size < len(CHUNK) * 192:  # the head is about 100 bytes more: the last read completes the body
            if len(chunks) % 8 == 7:
                time.sleep(0.02)
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {size} bytes"
            chunks.append(chunk)
            size += len(chunk)
        while not b"".join(chunks[-2:]).endswith(CHUNK[-64:]):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {size} bytes"
            chunks.append(chunk)
    body = b"".join(chunks).partition(b"\r\n\r\n")[2]
    assert body == CHUNK * 192
