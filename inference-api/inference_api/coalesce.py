"""One write per response: a response's status line, headers and body leave as one socket write.

uvicorn writes a response's status line and headers, then its body, each straight to the socket (uvloop
sends at once when nothing is queued): two ``write`` system calls and two TCP segments per answer, and the
client wakes twice. Under load at 64 clients those two calls were about a fifth of the event loop's time
(py-spy, ``bench/api.py``). ``CoalescingHttpProtocol`` gives uvicorn's httptools protocol a transport that
holds writes and sends what it holds in one call when the response is complete (uvicorn's
``on_response_complete``), so an answer leaves as soon as its last byte is written, even when the same
loop step goes on to build other answers (a micro-batch's results). What a response writes before it is
complete (an ``100 Continue``, a streamed body's chunks) leaves at the end of the loop step
(``loop.call_soon``), or at once from ``FLUSH_BYTES``, before a close and before end-of-file. Everything
else the protocol asks of its transport (flow control, addresses, ``is_closing``, ``set_protocol``) is the
socket transport's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024  # held bytes sent at once from this size (asyncio's default write high-water mark)


class CoalescingTransport:
    """A transport proxy: ``write`` holds data until ``flush`` (the protocol's, at the end of a response; else
    at the end of the loop step, or from ``FLUSH_BYTES``); the socket transport gets it in one ``writelines``
    (one ``writev`` on uvloop, no joined copy). ``close`` and ``write_eof`` send what is held first; ``abort``
    drops it, as the socket transport drops its own buffer.

    A flush that fails (the socket transport refuses the data) is logged and the connection aborted: uvicorn
    would have closed it on the same error, and the client must not wait on a half-sent response."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)  # no copy for bytes; a caller may reuse its bytearray or memoryview
        if not chunk:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(chunk)
        self._size += len(chunk)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held in one call (nothing is sent once the socket transport is closing)."""
        if not self._held:
            return
        held, self._held, self._size = self._held, [], 0
        if self._transport.is_closing():
            return
        try:
            self._transport.writelines(held)
        except Exception:
            log.exception("a response could not be written (%d bytes); the connection is aborted", sum(map(len, held)))
            self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        try:
            self.flush()
        finally:
            self._transport.write_eof()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the socket transport's
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol on a ``CoalescingTransport``, flushed when a response is complete."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
