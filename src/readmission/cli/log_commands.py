"""`readmission purge-predictions`: the prediction log's retention on the embedded log (the cluster runs the
same purge as a CronJob, ``python -m inference_api.retention``).

SQLAlchemy and the purge are imported inside the command: `readmission --help` needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from readmission.retention import PurgeResult

    from .settings import Settings

PANEL = "Prediction log"


def register_log_commands(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    """Add the prediction-log commands to ``app``."""

    @app.command("purge-predictions", rich_help_panel=PANEL)
    def purge_predictions(
        days: Annotated[
            int | None,
            typer.Option("--days", min=1, help="Keep this many days (default: PREDICTION_LOG_RETENTION_DAYS, 90)."),
        ] = None,
        log_url: Annotated[
            str | None,
            typer.Option(
                "--log-url", help="The log's SQLAlchemy URL (env PREDICTION_LOG_URL; default: the embedded one)."
            ),
        ] = None,
        chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per delete transaction.")] = 5_000,
    ) -> None:
        """Delete prediction-log rows older than the retention, in chunks (the API keeps logging meanwhile)."""
        settings = settings_factory(prediction_log_url=log_url, prediction_log_retention_days=days)
        kept = settings.prediction_log_retention_days
        result = _purge(settings.log_url, kept, chunk_rows, console)
        out.print(
            f"purge-predictions: {result.deleted:,} row(s) older than {kept} day(s) (before "
            f"{result.cutoff:%Y-%m-%d %H:%M} UTC) deleted in {result.chunks} chunk(s), and "
            f"{result.explanations_deleted:,} logged explanation(s), {result.outcomes_deleted:,} outcome(s) and "
            f"{result.monitoring_deleted:,} monitor result(s) of the same age ({result.seconds:.1f} s)"
        )


def _purge(url: str, kept: int, chunk_rows: int, console: Console) -> PurgeResult:
    """Purge the log at ``url`` of rows older than ``kept`` days; ``ReadmissionError`` (one line, the URL without
    its password) when it cannot be opened or read, ``PredictionLogMissingError`` when it does not exist yet."""
    from sqlalchemy.exc import SQLAlchemyError

    from readmission.db import display_url
    from readmission.errors import ReadmissionError, short_reason
    from readmission.retention import open_prediction_log, purge_prediction_log

    where = url.split("://", 1)[0] + "://..."
    try:
        where = display_url(url)  # an unparsable URL fails here, reported below
        engine = open_prediction_log(url)
        with console.status(f"deleting rows older than {kept} day(s) from {where}"):
            try:
                return purge_prediction_log(engine, kept, chunk_rows)
            finally:
                engine.dispose()
    except SQLAlchemyError as exc:
        raise ReadmissionError(
            f"cannot purge the prediction log at {where}: {short_reason(exc)}; check --log-url or "
            "PREDICTION_LOG_URL (rows deleted so far stay deleted: run it again to resume)"
        ) from None
