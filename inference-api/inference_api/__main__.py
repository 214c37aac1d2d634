"""Run the service: `python -m inference_api` (one uvicorn worker; scale with replicas)."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from inference_api.app import create_app
from inference_api.prediction_log import CLOSE_MARGIN_SECONDS
from inference_api.protocol_path import ProtocolPathHttp, why_off
from inference_api.settings import ApiSettings, logging_level, settings_or_exit
from inference_api.shutdown import AnswerBeforeExit

# After SIGTERM, how long a request in flight may take to be answered before it is answered 503 (with
# Connection: close); then how long uvicorn waits for those answers to go out before it gives up.
ANSWER_SECONDS = 20.0
ANSWER_MARGIN_SECONDS = 5.0
# After uvicorn's graceful wait the lifespan shutdown stops the batcher and the registry poller without
# waiting for them, and flushes the log (PREDICTION_LOG_FLUSH_SECONDS, plus the log's own CLOSE_MARGIN_SECONDS
# to stop its writer); the process then exits (through Python, or at once past a stuck model call).
STOP_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class ShutdownBudget:
    """The seconds from SIGTERM to the exit, in order; ``total`` must fit the pod's grace period after
    its preStop pause (deployment.yaml: terminationGracePeriodSeconds >= preStop sleep + total)."""

    answer: float
    graceful_timeout: float
    log_flush: float
    log_close_margin: float
    stop_margin: float

    @property
    def total(self) -> float:
        return self.graceful_timeout + self.log_flush + self.log_close_margin + self.stop_margin


def shutdown_budget(settings: ApiSettings) -> ShutdownBudget:
    """Each phase of the shutdown, from the settings (seconds)."""
    return ShutdownBudget(
        answer=ANSWER_SECONDS,
        graceful_timeout=ANSWER_SECONDS + ANSWER_MARGIN_SECONDS,
        log_flush=settings.prediction_log_flush_seconds,
        log_close_margin=CLOSE_MARGIN_SECONDS,
        stop_margin=STOP_MARGIN_SECONDS,
    )


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for this app (also the tests' servers), with ``options`` (host, port, ...).

    One socket write per response (``coalesce``); an ordinary ``POST /predict`` answered from the protocol
    (``protocol_path``). No access log: every request is counted in /metrics and
    every prediction is in the log table. No proxy-header rewriting: the API never reads the client address,
    and uvicorn's ProxyHeadersMiddleware (on by default) scanned every request's headers for X-Forwarded-For
    from a trusted proxy. No ``server: uvicorn`` header: it names the server software to every client (OWASP's
    secure-headers advice).
    """
    return uvicorn.Config(
        app, http=ProtocolPathHttp, access_log=False, proxy_headers=False, server_header=False, **options
    )


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells the app when the stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: AnswerBeforeExit) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # The app as uvicorn serves it (wrapped, e.g., by its message logger at LOG_LEVEL=trace).
        reason = why_off(self.config.loaded_app)
        logging.getLogger("inference_api").info("POST /predict: protocol path %s", f"off: {reason}" if reason else "on")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self._app.begin()
        super().handle_exit(sig, frame)


def _exit_through_python(signum: int, _frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the same signal again with the handler
    # it found. Exiting through Python here (exit status 128 + signal, as the default action gives) lets
    # atexit run, so multiprocessing releases the prediction log's shared semaphores instead of its
    # resource tracker warning that they leaked. A model call still stuck past PREDICT_TIMEOUT_SECONDS would
    # hold that exit forever (Python joins the model thread): then leave at once, the log already flushed.
    stuck = [t.name for t in threading.enumerate() if t.name.startswith("predict") and t.is_alive()]
    if stuck:
        logging.getLogger("inference_api").error("exiting past a stuck model call (%s)", ", ".join(stuck))
        logging.shutdown()
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


def main() -> None:
    """Start uvicorn with the settings from the environment."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_through_python)
    settings = settings_or_exit(ApiSettings, "inference API")
    logging.basicConfig(
        level=logging_level(settings.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    budget = shutdown_budget(settings)
    app = AnswerBeforeExit(create_app(settings), budget.answer)
    config = server_config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(budget.graceful_timeout),
    )
    server = _Server(config, app)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's status for a failed start-up (as uvicorn.run exits)


if __name__ == "__main__":
    main()
