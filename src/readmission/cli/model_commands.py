"""`readmission train | promote | rollback | models`: the model side of the CLI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from readmission.errors import ReadmissionError
from readmission.names import MODEL_NAME

if TYPE_CHECKING:
    from readmission.registry import VersionSummary
    from readmission.steps import JobSummary
    from readmission.training import TrainConfig

    from .settings import Settings  # MLflow and scikit-learn take seconds to import: only the model commands load them


SHOWN_METRICS = ("roc_auc_30", "roc_auc_ovr_macro", "average_precision_30", "brier_skill_30", "calibration_slope_30")


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    from readmission.training import prepare_tracking

    prepare_tracking(settings.tracking_uri, settings.artifact_location)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def training_config(settings: Settings) -> TrainConfig:
    """The ``TrainConfig`` of the TRAIN_* (and PROMOTION_MIN_IMPROVEMENT) settings; ``ReadmissionError`` naming
    TRAIN_FAMILIES when it holds an unknown family."""
    from readmission.training import TrainConfig

    try:
        return TrainConfig(
            families=settings.families,
            time_budget_seconds=settings.train_time_budget_seconds,
            max_trials=settings.train_max_trials,
            seed=settings.train_seed,
            min_improvement=settings.promotion_min_improvement,
            max_fit_rows=settings.train_max_fit_rows,
        )
    except ValueError as exc:
        raise ReadmissionError(f"invalid setting TRAIN_FAMILIES: {exc}") from None


def train_models(settings: Settings, out: Console, console: Console) -> JobSummary:
    """Run the training job (the DAG's steps, one after the other); print the candidates and a one-line summary."""
    from readmission.steps import train_job

    config = training_config(settings)
    job = train_job(
        settings.clean_url,
        settings.tracking_uri,
        config,
        artifact_location=settings.artifact_location,
        log=lambda line: console.print(line, highlight=False),
    )
    out.print(_candidate_table(job))
    p = job["promotion"]
    out.print(
        f"train: registered {MODEL_NAME} v{p['version']} ({p['family']}, test roc_auc_30 "
        f"{p['test_roc_auc_30']:.4f}); {'promoted to champion' if p['promoted'] else 'champion unchanged'}: "
        f"{p['reason']} (job {job['training_key']}, {job['seconds']:.1f} s)"
    )
    return job


def _candidate_table(job: JobSummary) -> Table:
    """One row per family: validation ROC-AUC (which selects; * marks the best) and test metrics (which report)."""
    table = Table(title="candidates (* best on validation ROC-AUC <30)", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("family", overflow="fold")
    table.add_column("calibrated")
    table.add_column("validation\nROC-AUC <30", justify="right")
    for metric in CANDIDATE_METRICS:
        table.add_column(f"test\n{METRIC_HEADERS[metric]}", justify="right")
    for c in job["candidates"]:
        table.add_row(
            c["family"].replace("_", " ") + (" *" if c["family"] == job["best"]["family"] else ""),
            "yes" if c["calibrated"] else "no",
            f"{c['validation']['roc_auc_30']:.4f}",
            *(f"{c['test'][m]:.4f}" for m in CANDIDATE_METRICS),
        )
    return table


PANEL = "Models: MLflow registry and the champion gate"


METRIC_HEADERS = {
    "roc_auc_30": "ROC-AUC <30",
    "brier_skill_30": "Brier skill",
    "roc_auc_ovr_macro": "ROC-AUC 3-class",
    "average_precision_30": "avg precision <30",
    "calibration_slope_30": "calibration slope",
}
NARROW_METRICS = ("roc_auc_30",)
CANDIDATE_METRICS = ("roc_auc_30", "brier_skill_30", "calibration_slope_30")
GATE_WORDS = {"promoted": "promoted", "kept previous champion": "kept"}


def versions_table(versions: list[VersionSummary], wide: bool = False) -> Table:
    """The `models` table: fits 80 columns with the selection metric, or every metric with ``wide``.

    Version numbers and aliases never wrap or shorten; the gate decision wraps when space is short.
    """
    metrics = SHOWN_METRICS if wide else NARROW_METRICS
    table = Table(title=f"{MODEL_NAME} versions (test split)", box=box.SIMPLE_HEAD, pad_edge=False)
    widest = max((len(v.version) for v in versions), default=7)
    table.add_column("version", no_wrap=True, justify="right", min_width=widest)
    table.add_column("aliases", no_wrap=True, min_width=max((len(", ".join(v.aliases)) for v in versions), default=7))
    table.add_column("family", overflow="fold")
    for metric in metrics:
        table.add_column(METRIC_HEADERS[metric], justify="right", no_wrap=True)
    table.add_column("last gate", overflow="fold")
    if wide:
        table.add_column("run", no_wrap=True)
    for v in versions:
        row = [v.version, ", ".join(v.aliases), v.family.replace("_", " ")]
        row += [f"{v.metrics[m]:.4f}" if m in v.metrics else "" for m in metrics]
        gate = v.decision if wide else GATE_WORDS.get(v.decision, v.decision)
        table.add_row(*row, gate, *([v.run_id] if wide else []))
    return table


def register_model_commands(app: typer.Typer, settings_factory, out: Console, console: Console) -> None:  # type: ignore[no-untyped-def]
    """Add the model commands to ``app``."""

    @app.command(rich_help_panel=PANEL)
    def train() -> None:
        """Train every candidate family, register the best, and move `champion` only if it is better."""
        train_models(settings_factory(), out, console)

    @app.command(rich_help_panel=PANEL)
    def promote(
        version: Annotated[str | None, typer.Option(help="Version to consider (default: the `challenger`).")] = None,
    ) -> None:
        """Re-run the promotion gate for a registered version against the champion on today's test split."""
        settings = settings_factory()  # first: it sets MLflow's environment, which MLflow reads at import
        from readmission.clean import read_clean
        from readmission.db import create_db_engine
        from readmission.registry import CHALLENGER, RegistryError, alias_version, existing_version, promote_if_better
        from readmission.training import _score_on

        client = _client(settings)
        version = existing_version(client, version) if version is not None else alias_version(client, CHALLENGER)
        if version is None:
            raise RegistryError(f"model {MODEL_NAME!r} has no `challenger` yet: run `readmission train` first")
        score = _score_on(read_clean(create_db_engine(settings.clean_url), "test"))
        decision = promote_if_better(
            client, version, score(version), score, min_improvement=settings.promotion_min_improvement, again=True
        )
        out.print(
            f"promote: v{version} {'is now champion' if decision.promoted else 'not promoted'}: {decision.reason}"
        )

    @app.command("rollback", rich_help_panel=PANEL)
    def rollback_command(version: Annotated[str, typer.Argument(help="Registered version to make champion.")]) -> None:
        """Point `champion` back at an earlier version (no gate: an operator's decision)."""
        settings = settings_factory()  # first: it sets MLflow's environment, which MLflow reads at import
        from readmission.registry import rollback

        started = time.perf_counter()
        previous = rollback(_client(settings), version)
        was = f"was v{previous}" if previous else "there was none"
        out.print(f"rollback: champion is now v{int(version)} ({was}) ({time.perf_counter() - started:.1f} s)")

    @app.command(rich_help_panel=PANEL)
    def models(
        wide: Annotated[bool, typer.Option("--wide", help="Every metric and the training run id.")] = False,
    ) -> None:
        """List registered versions with their aliases and test metrics (newest first)."""
        settings = settings_factory()  # first: it sets MLflow's environment, which MLflow reads at import
        from readmission.registry import CHAMPION, list_versions

        versions = list_versions(_client(settings))
        table = versions_table(versions, wide)
        if wide:  # every column whole, wider than the terminal if need be (the terminal wraps the lines)
            natural = out.measure(table, options=out.options.update_width(10_000)).maximum
            Console(width=max(out.width, natural), file=out.file, soft_wrap=True).print(table)
        else:
            out.print(table)
        champion = next((v for v in versions if CHAMPION in v.aliases), None)
        summary = f"champion v{champion.version}" if champion else "no champion yet: run `readmission train`"
        out.print(f"models: {len(versions)} version(s); {summary}")
