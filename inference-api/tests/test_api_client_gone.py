"""A client that closes its connection before sending its whole body is not a server error: no 500 counted,
no error log line (real uvicorn, real sockets)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import httpx
import pytest
from apisupport import ApiServer, Registry, settings_for, wait_until


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_body_cut_short_counts_499_and_logs_no_error(
    registry: Registry, tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}")
    with caplog.at_level(logging.INFO, logger="inference_api"), ApiServer(settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 120, "the model to load")
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            head = f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            sock.sendall(head.encode() + b'{"age": ')  # 8 of the 1,000 bytes announced, then gone
            time.sleep(0.2)
        endpoint = f'endpoint="{path}",method="POST"'
        wait_until(lambda: f"{endpoint},status=" in httpx.get(f"{api.url}/metrics").text, what="the request counted")
        counted = [line for line in httpx.get(f"{api.url}/metrics").text.splitlines() if endpoint in line]
    assert counted == [f'inference_requests_total{{{endpoint},status="499"}} 1.0'], counted
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("closed the connection before sending its whole body" in r.getMessage() for r in caplog.records)
