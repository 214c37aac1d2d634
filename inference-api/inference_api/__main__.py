"""Run the service: `python -m inference_api` (one uvicorn worker; scale with replicas)."""

from __future__ import annotations

import logging
import math
import signal
from types import FrameType

import uvicorn

from inference_api.settings import ApiSettings


def _exit_through_python(signum: int, _frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the same signal again with the handler
    # it found. Exiting through Python here (exit status 128 + signal, as the default action gives) lets
    # atexit run, so multiprocessing releases the prediction log's shared semaphores instead of its
    # resource tracker warning that they leaked.
    raise SystemExit(128 + signum)


def main() -> None:
    """Start uvicorn with the settings from the environment."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_through_python)
    settings = ApiSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "inference_api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        access_log=False,  # every request is counted in /metrics and every prediction is in the log table
        timeout_graceful_shutdown=math.ceil(settings.prediction_log_flush_seconds) + 10,
    )


if __name__ == "__main__":
    main()
