"""`readmission train | promote | rollback | models`: the model side of the CLI."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from readmission.db import create_db_engine
from readmission.errors import ReadmissionError
from readmission.names import MODEL_NAME

from .settings import Settings

if TYPE_CHECKING:  # MLflow and scikit-learn take seconds to import: only the model commands load them
    from readmission.steps import JobSummary


SHOWN_METRICS = ("roc_auc_30", "roc_auc_ovr_macro", "average_precision_30", "brier_skill_30", "calibration_slope_30")


def _mlflow_environment(settings: Settings) -> None:
    """Put the MLflow client's retry count where MLflow reads it, unless the operator exported one."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_http_request_max_retries))


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    _mlflow_environment(settings)
    from mlflow import MlflowClient

    from readmission.training import prepare_tracking

    prepare_tracking(settings.tracking_uri, settings.artifact_location)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def train_models(settings: Settings, out: Console, console: Console) -> JobSummary:
    """Run the training job (the DAG's steps, one after the other); print the candidates and a one-line summary."""
    _mlflow_environment(settings)
    from readmission.steps import train_job
    from readmission.training import TrainConfig

    try:
        config = TrainConfig(
            families=settings.families,
            time_budget_seconds=settings.train_time_budget_seconds,
            max_trials=settings.train_max_trials,
            seed=settings.train_seed,
            min_improvement=settings.promotion_min_improvement,
        )
    except ValueError as exc:
        raise ReadmissionError(f"invalid setting TRAIN_FAMILIES: {exc}") from None
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
    table = Table(title="candidates (test split; selection by validation ROC-AUC <30)")
    for header in ("family", "calibrated", "validation auc<30", *(f"test {m}" for m in SHOWN_METRICS)):
        table.add_column(header)
    for c in job["candidates"]:
        table.add_row(
            c["family"] + (" *" if c["family"] == job["best"]["family"] else ""),
            "yes" if c["calibrated"] else "no",
            f"{c['validation']['roc_auc_30']:.4f}",
            *(f"{c['test'][m]:.4f}" for m in SHOWN_METRICS),
        )
    return table


def register_model_commands(app: typer.Typer, settings_factory, out: Console, console: Console) -> None:  # type: ignore[no-untyped-def]
    """Add the model commands to ``app``."""

    @app.command()
    def train() -> None:
        """Train every candidate family, register the best, and move `champion` only if it is better."""
        train_models(settings_factory(), out, console)

    @app.command()
    def promote(
        version: Annotated[str | None, typer.Option(help="Version to consider (default: the `challenger`).")] = None,
    ) -> None:
        """Re-run the promotion gate for a registered version against the champion on today's test split."""
        from readmission.clean import read_clean
        from readmission.registry import CHALLENGER, RegistryError, alias_version, existing_version, promote_if_better
        from readmission.training import _score_on

        settings = settings_factory()
        client = _client(settings)
        version = existing_version(client, version) if version else alias_version(client, CHALLENGER)
        if version is None:
            raise RegistryError(f"model {MODEL_NAME!r} has no `challenger` yet: run `readmission train` first")
        score = _score_on(read_clean(create_db_engine(settings.clean_url), "test"))
        decision = promote_if_better(
            client, version, score(version), score, min_improvement=settings.promotion_min_improvement, again=True
        )
        out.print(
            f"promote: v{version} {'is now champion' if decision.promoted else 'not promoted'}: {decision.reason}"
        )

    @app.command("rollback")
    def rollback_command(version: Annotated[str, typer.Argument(help="Registered version to make champion.")]) -> None:
        """Point `champion` back at an earlier version (no gate: an operator's decision)."""
        from readmission.registry import rollback

        started = time.perf_counter()
        previous = rollback(_client(settings_factory()), version)
        was = f"was v{previous}" if previous else "there was none"
        out.print(f"rollback: champion is now v{int(version)} ({was}) ({time.perf_counter() - started:.1f} s)")

    @app.command()
    def models() -> None:
        """List registered versions with their aliases and test metrics."""
        from readmission.registry import CHAMPION, list_versions

        versions = list_versions(_client(settings_factory()))
        table = Table(title=f"{MODEL_NAME} versions")
        for header in ("version", "aliases", "family", *SHOWN_METRICS, "gate"):
            table.add_column(header)
        for v in versions:
            table.add_row(
                v.version,
                ", ".join(v.aliases),
                v.family,
                *(f"{v.metrics[m]:.4f}" if m in v.metrics else "" for m in SHOWN_METRICS),
                v.decision,
            )
        out.print(table)
        champion = next((v for v in versions if CHAMPION in v.aliases), None)
        summary = f"champion v{champion.version}" if champion else "no champion yet: run `readmission train`"
        out.print(f"models: {len(versions)} version(s); {summary}")
