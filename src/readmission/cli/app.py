"""`readmission`: the platform's command line. Each command ends with a one-line summary.

Start-up is kept short: `--help` imports typer and rich only; pydantic (the settings), SQLAlchemy, pandas,
scikit-learn and MLflow are imported inside the commands that use them (`bench/cli_startup.py` measures it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from readmission.errors import ReadmissionError, access_advice, short_reason
from readmission.names import MODEL_NAME

from .data_commands import (
    BatchesOption,
    DataPathOption,
    build_clean_store,
    fetch_dataset,
    load_pending_batches,
    register_data_commands,
)
from .log_commands import register_log_commands
from .loop_commands import register_loop_commands
from .model_commands import register_model_commands, train_models
from .quality_commands import register_quality_commands

if TYPE_CHECKING:
    from .settings import Settings

app = typer.Typer(
    help="Diabetes-readmission platform. Data: fetch the UCI data, load it into the RAW database in batches, "
    "build the CLEAN dataset with a patient-grouped split. Models: train candidates and gate the `champion`, "
    "measure quality over several splits (`evaluate`), "
    "list versions, re-run the gate, roll back. Prediction log: delete rows past the retention. `run` does the "
    "whole job; `status` and `models` show what is stored. Settings come from the environment or .env (see .env.example); options override them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
# Piped or redirected output keeps whole lines (a table takes its natural width); a terminal gets its own width.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1_000)


def _settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    from .settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ReadmissionError(f"invalid setting ({problems}); fix the environment or .env") from None
    _mlflow_environment(settings)
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _mlflow_environment(settings: Settings) -> None:
    """Put the MLflow client's retry count and timeout where MLflow reads them, and keep MLflow's INFO lines out of the
    command's output (MLFLOW_LOGGING_LEVEL=WARNING), unless the operator exported either. Runs before any
    command imports MLflow, which reads them at import."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_http_request_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_http_request_timeout))
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a command's or a job's log
    settings.export_mlflow_credentials()


@app.command(rich_help_panel="The whole job")
def status() -> None:
    """Show what the RAW and CLEAN databases hold."""
    from readmission.db import create_db_engine, display_url
    from readmission.store_status import clean_status, raw_status

    settings = _settings()
    raw = raw_status(create_db_engine(settings.raw_url))
    clean = clean_status(create_db_engine(settings.clean_url))
    table = Table(title="readmission data status", show_header=False)
    total = f" of {raw.batches_total}" if raw.batches_total is not None else ""
    table.add_row("RAW database", display_url(settings.raw_url))
    table.add_row("batches loaded", f"{raw.batches_loaded}{total}")
    table.add_row("raw rows", f"{raw.rows:,}")
    table.add_row("quarantined rows", f"{raw.rows_quarantined:,}")
    table.add_row("CLEAN database", display_url(settings.clean_url))
    table.add_row("clean rows", f"{clean.clean_rows:,}")
    for name, rows in clean.split_rows.items():
        table.add_row(f"  {name}", f"{rows:,}")
    table.add_row("clean built at", str(clean.built_at or "never"))
    out.print(table)
    out.print(
        f"status: {raw.rows:,} raw rows in {raw.batches_loaded}{total} batches; {clean.clean_rows:,} clean rows "
        f"(train {clean.split_rows['train']:,} / validation {clean.split_rows['validation']:,} / "
        f"test {clean.split_rows['test']:,})"
    )


@app.command(rich_help_panel="The whole job")
def run(data_path: DataPathOption = None, batches: BatchesOption = None) -> None:
    """The whole job: fetch, load pending batches, build CLEAN, train and gate the champion, print status."""
    started = time.perf_counter()
    settings = _settings(data_path=data_path)
    load_pending_batches(settings, fetch_dataset(settings, console), batches, out, console)
    build_clean_store(settings, out, console)
    status()
    job = train_models(settings, out, console)
    champion = job["promotion"]["champion_version"]
    out.print(f"run: done in {time.perf_counter() - started:.1f} s; champion is {MODEL_NAME} v{champion}")


register_data_commands(app, _settings, out, console)
register_model_commands(app, _settings, out, console)
register_quality_commands(app, _settings, out, console)
register_loop_commands(app, _settings, out, console)
register_log_commands(app, _settings, out, console)


def main() -> None:
    """Entry point: expected failures print one clear line and exit 1, without a traceback."""
    try:
        app()
    except ReadmissionError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except Exception as exc:  # MLflow's errors (an unreachable registry) without importing MLflow here
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        advice = access_advice(exc, os.environ.get("MLFLOW_TRACKING_USERNAME")) or (
            "check MLFLOW_TRACKING_URI and that MLflow is up, then `readmission models` shows what the registry holds"
        )
        console.print(f"[red]error:[/] the MLflow registry failed: {short_reason(exc)}; {advice}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
