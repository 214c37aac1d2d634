"""`readmission fetch | load-raw | build-clean | synthesize`: the data side of the CLI.

pandas and the loaders are imported inside the commands: `readmission --help` and `status` need neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from readmission.source import Dataset

    from .settings import Settings

DataPathOption = Annotated[
    Path | None, typer.Option("--data-path", help="Local diabetic_data.csv or UCI zip (env DATA_PATH).")
]
BatchesOption = Annotated[
    int | None,
    typer.Option("--batches", min=0, help="Load at most this many pending batches (default: all)."),
]


def _progress(console: Console, amount: ProgressColumn) -> Progress:
    """A transient progress bar on stderr; ``amount`` says how done is shown (percent, bytes)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn(), console=console, transient=True
    )


def fetch_dataset(settings: Settings, console: Console) -> Dataset:
    """The data set: a local file is checked (spinner), a download shows a byte progress bar."""
    from readmission.source import resolve_dataset

    doing = f"checking {settings.data_path}" if settings.data_path else "looking for the UCI data set in the cache"
    with _progress(console, DownloadColumn()) as progress:
        task: list[TaskID] = [progress.add_task(doing, total=None)]

        def downloaded(done: int, total: int | None) -> None:  # called only while downloading
            if len(task) == 1:
                progress.remove_task(task[0])
                task.append(progress.add_task("downloading the UCI data set", total=total))
            progress.update(task[-1], completed=done, total=total)

        dataset = resolve_dataset(
            settings.data_dir,
            settings.data_path,
            url=settings.data_url,
            timeout_seconds=settings.download_timeout_seconds,
            progress=downloaded,
        )
    if not dataset.is_official:
        console.print(f"[yellow]note:[/] {dataset.path} is not the official UCI file (SHA-256 {dataset.sha256[:12]}…)")
    return dataset


def load_pending_batches(
    settings: Settings, dataset: Dataset, batches: int | None, out: Console, console: Console
) -> None:
    """Load pending batches with a progress bar and one line per batch; print the summary line."""
    from readmission.db import create_db_engine, display_url
    from readmission.raw import BatchResult, SourceFile, load_raw_batches
    from readmission.store_status import raw_status

    started = time.perf_counter()
    with console.status(f"reading {dataset.path}"):
        source = SourceFile.read(dataset.path, settings.batch_size)
    engine = create_db_engine(settings.raw_url)
    with _progress(console, TaskProgressColumn()) as progress:
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
    quarantined = (
        f", {report.rows_quarantined:,} quarantined (see table raw_quarantine)" if report.rows_quarantined else ""
    )
    out.print(
        f"load-raw: {len(report.loaded)} batch(es) loaded ({report.rows_loaded:,} rows{quarantined}), "
        f"{report.batches_already_loaded} already loaded, {report.batches_pending} pending; RAW holds "
        f"{status.rows:,} rows in {status.batches_loaded} batch(es) at {display_url(settings.raw_url)} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def build_clean_store(settings: Settings, out: Console, console: Console) -> None:
    """Rebuild CLEAN from RAW under a spinner; print the summary line."""
    from readmission.clean import SplitSpec, build_clean
    from readmission.db import create_db_engine, display_url

    spec = SplitSpec(settings.split_seed, settings.validation_fraction, settings.test_fraction)
    with console.status("building the CLEAN dataset (cleaning, diagnosis groups, patient-grouped split)"):
        report = build_clean(create_db_engine(settings.raw_url), create_db_engine(settings.clean_url), spec)
    splits = ", ".join(
        f"{name} {rows:,} rows / {report.split_patients[name]:,} patients" for name, rows in report.split_rows.items()
    )
    out.print(
        f"build-clean: {report.clean_rows:,} clean rows from {report.raw_rows:,} raw "
        f"({report.excluded_rows:,} death/hospice excluded); {splits}; seed {spec.seed} "
        f"at {display_url(settings.clean_url)} ({report.seconds:.1f} s)"
    )


PANEL = "Data: UCI file -> RAW -> CLEAN"


def register_data_commands(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    """Add the data commands to ``app``."""

    @app.command(rich_help_panel=PANEL)
    def fetch(data_path: DataPathOption = None) -> None:
        """Download the UCI data set into the cache (or check a local copy) and verify its checksum."""
        started = time.perf_counter()
        dataset = fetch_dataset(settings_factory(data_path=data_path), console)
        out.print(
            f"fetch: {dataset.path} ({dataset.origin}, SHA-256 {dataset.sha256[:12]}…, "
            f"{'official' if dataset.is_official else 'not the official file'}) "
            f"({time.perf_counter() - started:.1f} s)"
        )

    @app.command("load-raw", rich_help_panel=PANEL)
    def load_raw(
        data_path: DataPathOption = None,
        batches: BatchesOption = None,
        batch_size: Annotated[int | None, typer.Option(min=1, help="Rows per batch (env BATCH_SIZE).")] = None,
    ) -> None:
        """Load pending batches into the RAW database; resumable, never loads a row twice."""
        settings = settings_factory(data_path=data_path, batch_size=batch_size)
        load_pending_batches(settings, fetch_dataset(settings, console), batches, out, console)

    @app.command("build-clean", rich_help_panel=PANEL)
    def build_clean_command() -> None:
        """Rebuild the CLEAN dataset from RAW: cleaning, diagnosis groups, patient-grouped split."""
        build_clean_store(settings_factory(), out, console)

    @app.command(rich_help_panel=PANEL)
    def synthesize(
        output: Annotated[Path, typer.Argument(help="CSV file to write, in the raw UCI layout.")],
        rows: Annotated[int, typer.Option(min=1, help="Number of encounters.")] = 1000,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    ) -> None:
        """Write synthetic encounters that follow the feature contract (for demos and tests only)."""
        from readmission.synthetic import write_synthetic_csv

        write_synthetic_csv(output, rows, seed)
        out.print(f"synthesize: wrote {rows:,} synthetic encounters to {output}")
