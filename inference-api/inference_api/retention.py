"""The prediction-log purge as a job: ``python -m inference_api.retention`` (the CronJob prediction-log-purge).

It reads ``PredictionLogSettings`` (PREDICTION_LOG_URL, PREDICTION_LOG_RETENTION_DAYS, DATA_DIR, LOG_LEVEL) from
the API's ConfigMap and its own PREDICTION_LOG_URL (the ``inference_purge`` database user, which may only read
and delete), needs no reload token, and deletes the rows older than the retention in chunks
(``readmission.retention``). Exit status: 0 done, or nothing logged yet; 1 the database failed (the Job retries;
what was deleted stays deleted); 2 invalid settings or options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.exc import SQLAlchemyError

from inference_api.settings import PredictionLogSettings, logging_level, settings_or_exit
from readmission.db import display_url
from readmission.errors import short_reason
from readmission.retention import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_PAUSE_SECONDS,
    PredictionLogMissingError,
    open_prediction_log,
    purge_prediction_log,
)

log = logging.getLogger("inference_api.retention")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference_api.retention",
        description="Delete prediction-log rows older than PREDICTION_LOG_RETENTION_DAYS, in chunks.",
    )
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per delete transaction")
    parser.add_argument(
        "--pause-seconds", type=float, default=DEFAULT_PAUSE_SECONDS, help="pause between chunks (for the writer)"
    )
    args = parser.parse_args(argv)
    if args.chunk_rows < 1 or args.pause_seconds < 0:
        parser.error("--chunk-rows must be at least 1 and --pause-seconds at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one purge with the settings from the environment; the exit status (see the module)."""
    args = _arguments(argv)
    settings = settings_or_exit(PredictionLogSettings, "prediction-log purge")
    logging.basicConfig(
        level=logging_level(settings.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    days, where = settings.prediction_log_retention_days, display_url(settings.log_url)
    log.info("purging rows older than %d day(s) from %s", days, where)
    try:
        engine = open_prediction_log(settings.log_url)
    except PredictionLogMissingError as exc:
        log.warning("nothing to purge: %s", exc)
        return 0
    except SQLAlchemyError as exc:
        log.error("cannot open the prediction log at %s: %s", where, short_reason(exc))
        return 1
    try:
        purge_prediction_log(engine, days, args.chunk_rows, args.pause_seconds)
    except SQLAlchemyError as exc:
        log.error("purge stopped by a database error (run again to resume): %s", short_reason(exc))
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
