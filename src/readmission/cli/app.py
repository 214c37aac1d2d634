"""`readmission`: the platform's command line. Each command ends with a one-line summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from readmission.clean import SplitSpec, build_clean, clean_status
from readmission.db import create_db_engine, display_url
from readmission.errors import ReadmissionError, short_reason
from readmission.names import MODEL_NAME
from readmission.raw import BatchResult, SourceFile, load_raw_batches, raw_status
from readmission.source import Dataset, resolve_dataset
from readmission.synthetic import write_synthetic_csv

from .model_commands import register_model_commands, train_models
from .settings import Settings

app = typer.Typer(
    help="Diabetes-readmission platform: fetch the UCI data, load it into the RAW database in batches, "
    "build the CLEAN dataset with a patient-grouped split, and show what is stored. "
    "Settings come from the environment (see .env.example); options override them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataPathOption = Annotated[
    Path | None, typer.Option("--data-path", help="Local diabetic_data.csv or UCI zip (env DATA_PATH).")
]
BatchesOption = Annotated[
    int | None,
    typer.Option("--batches", min=0, help="Load at most this many pending batches (default: all)."),
]


def _settings(**overrides: object) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ReadmissionError(f"invalid setting ({problems}); fix the environment or .env") from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _progress(amount: ProgressColumn) -> Progress:
    """A transient progress bar on stderr; ``amount`` says how done is shown (percent, bytes)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn(), console=console, transient=True
    )


def _fetch(settings: Settings) -> Dataset:
    with _progress(DownloadColumn()) as progress:
        task = progress.add_task("downloading UCI data set", total=None)
        dataset = resolve_dataset(
            settings.data_dir,
            settings.data_path,
            url=settings.data_url,
            timeout_seconds=settings.download_timeout_seconds,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if not dataset.is_official:
        console.print(f"[yellow]note:[/] {dataset.path} is not the official UCI file (SHA-256 {dataset.sha256[:12]}…)")
    return dataset


def _load_raw(settings: Settings, dataset: Dataset, batches: int | None) -> None:
    started = time.perf_counter()
    source = SourceFile.read(dataset.path, settings.batch_size)
    engine = create_db_engine(settings.raw_url)
    with _progress(TaskProgressColumn()) as progress:
        task = progress.add_task(f"loading batches of {settings.batch_size:,} rows", total=source.batch_count)
        progress.update(task, completed=raw_status(engine).batches_loaded)

        def advance(result: BatchResult) -> None:
            progress.advance(task)
            console.print(
                f"  batch {result.batch_number}: {result.rows_loaded:,} rows loaded, "
                f"{result.rows_quarantined:,} quarantined ({result.seconds:.2f} s)"
            )

        report = load_raw_batches(engine, source, max_batches=batches, on_batch=advance)
    status = raw_status(engine)
    quarantine_note = (
        f", {report.rows_quarantined:,} quarantined (see table raw_quarantine)" if report.rows_quarantined else ""
    )
    out.print(
        f"load-raw: {len(report.loaded)} batch(es) loaded ({report.rows_loaded:,} rows{quarantine_note}), "
        f"{report.batches_already_loaded} already loaded, {report.batches_pending} pending; RAW holds "
        f"{status.rows:,} rows in {status.batches_loaded} batches at {display_url(settings.raw_url)} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def _build_clean(settings: Settings) -> None:
    spec = SplitSpec(settings.split_seed, settings.validation_fraction, settings.test_fraction)
    with console.status("building the CLEAN dataset"):
        report = build_clean(create_db_engine(settings.raw_url), create_db_engine(settings.clean_url), spec)
    splits = ", ".join(
        f"{name} {rows:,} rows / {report.split_patients[name]:,} patients" for name, rows in report.split_rows.items()
    )
    out.print(
        f"build-clean: {report.clean_rows:,} clean rows from {report.raw_rows:,} raw "
        f"({report.excluded_rows:,} death/hospice excluded); {splits}; seed {spec.seed} "
        f"at {display_url(settings.clean_url)} ({report.seconds:.1f} s)"
    )


@app.command()
def fetch(data_path: DataPathOption = None) -> None:
    """Download the UCI data set into the cache (or check a local copy) and verify its checksum."""
    started = time.perf_counter()
    dataset = _fetch(_settings(data_path=data_path))
    out.print(
        f"fetch: {dataset.path} ({dataset.origin}, SHA-256 {dataset.sha256[:12]}…, "
        f"{'official' if dataset.is_official else 'not the official file'}) "
        f"({time.perf_counter() - started:.1f} s)"
    )


@app.command("load-raw")
def load_raw(
    data_path: DataPathOption = None,
    batches: BatchesOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Rows per batch (env BATCH_SIZE).")] = None,
) -> None:
    """Load pending batches into the RAW database; resumable, never loads a row twice."""
    settings = _settings(data_path=data_path, batch_size=batch_size)
    _load_raw(settings, _fetch(settings), batches)


@app.command("build-clean")
def build_clean_command() -> None:
    """Rebuild the CLEAN dataset from RAW: cleaning, diagnosis groups, patient-grouped split."""
    _build_clean(_settings())


@app.command()
def status() -> None:
    """Show what the RAW and CLEAN databases hold."""
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


@app.command()
def run(data_path: DataPathOption = None, batches: BatchesOption = None) -> None:
    """The whole job: fetch, load pending batches, build CLEAN, train and gate the champion, print status."""
    started = time.perf_counter()
    settings = _settings(data_path=data_path)
    _load_raw(settings, _fetch(settings), batches)
    _build_clean(settings)
    status()
    job = train_models(settings, out, console)
    champion = job["promotion"]["champion_version"]
    out.print(f"run: done in {time.perf_counter() - started:.1f} s; champion is {MODEL_NAME} v{champion}")


@app.command()
def synthesize(
    output: Annotated[Path, typer.Argument(help="CSV file to write, in the raw UCI layout.")],
    rows: Annotated[int, typer.Option(min=1, help="Number of encounters.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic encounters that follow the feature contract (for demos and tests only)."""
    write_synthetic_csv(output, rows, seed)
    out.print(f"synthesize: wrote {rows:,} synthetic encounters to {output}")


register_model_commands(app, _settings, out, console)


def main() -> None:
    """Entry point: expected failures print one clear line and exit 1, without a traceback."""
    try:
        app()
    except ReadmissionError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    except Exception as exc:  # MLflow's errors (an unreachable registry) without importing MLflow here
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        console.print(
            f"[red]error:[/] the MLflow registry failed: {short_reason(exc)}; check MLFLOW_TRACKING_URI and that "
            "MLflow is up, then `readmission models` shows what the registry holds",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
