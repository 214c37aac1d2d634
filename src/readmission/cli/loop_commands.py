"""The closed loop's commands: `outcomes` (record observed readmissions), `monitor` (live quality and drift of
the served versions, and retraining when they degrade) and `replay` (the CLEAN test split through a running API,
then its true outcomes: the loop on real data without waiting 30 days).

Heavy imports (SQLAlchemy, pandas, scikit-learn, MLflow) happen inside the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from readmission.monitoring import MonitorReport

    from .settings import Settings

PANEL = "Closed loop"
LogUrlOption = Annotated[
    str | None, typer.Option("--log-url", help="The prediction log's SQLAlchemy URL (env PREDICTION_LOG_URL).")
]


def register_loop_commands(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    """Add `outcomes`, `monitor` and `replay` to ``app``."""

    @app.command("outcomes", rich_help_panel=PANEL)
    def outcomes(
        path: Annotated[Path, typer.Argument(help="CSV with columns encounter_id, readmitted, observed_at.")],
        log_url: LogUrlOption = None,
    ) -> None:
        """Record observed readmissions (idempotent); a malformed file records nothing and names each bad row."""
        from readmission.outcomes import read_outcome_file, record_outcomes
        from readmission.retention import open_prediction_log

        settings = settings_factory(prediction_log_url=log_url)
        checked = read_outcome_file(path)
        engine = open_prediction_log(settings.log_url)  # a mistyped URL is refused, not a new empty log
        try:
            report = record_outcomes(engine, checked, "file")
        finally:
            engine.dispose()
        out.print(f"outcomes: {report.summary()}")

    _register_monitor(app, settings_factory, out, console)
    _register_replay(app, settings_factory, out, console)


def _register_monitor(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    @app.command("monitor", rich_help_panel=PANEL)
    def monitor(
        log_url: LogUrlOption = None,
        window_days: Annotated[
            float | None, typer.Option("--window-days", help="Days of predictions (env MONITOR_WINDOW_DAYS, 30).")
        ] = None,
        horizon_days: Annotated[
            float | None,
            typer.Option(
                "--horizon-days",
                min=0,
                help="Judge quality on predictions at least this old (env MONITOR_OUTCOME_HORIZON_DAYS, 30; 0 after "
                "a replay, whose outcomes are all known at once).",
            ),
        ] = None,
    ) -> None:
        """Live ROC-AUC, Brier score, calibration and input drift per served version; stores them for the API's
        metrics and, when set up (AIRFLOW_API_URL), triggers retraining on degradation."""
        from .monitor_run import run

        if window_days is not None and window_days <= 0:
            raise typer.BadParameter("must be more than 0 (days of predictions)", param_hint="--window-days")
        settings = settings_factory(
            prediction_log_url=log_url, monitor_window_days=window_days, monitor_outcome_horizon_days=horizon_days
        )
        with console.status("reading the window's predictions and outcomes"):
            report = run(settings)
        print_report(out, report)


def _register_replay(
    app: typer.Typer, settings_factory: Callable[..., Settings], out: Console, console: Console
) -> None:
    @app.command("replay", rich_help_panel=PANEL)
    def replay(
        api_url: Annotated[str, typer.Option("--api-url", help="The inference API.")] = "http://127.0.0.1:8000",
        token: Annotated[
            str | None, typer.Option("--token", help="The API's token for POST /outcomes (default: RELOAD_TOKEN).")
        ] = None,
        fraction: Annotated[
            float, typer.Option("--fraction", min=0.0, max=1.0, help="Share of the outcomes fed (random).")
        ] = 1.0,
        delay: Annotated[float, typer.Option("--delay-seconds", min=0.0, help="Wait before the outcomes.")] = 0.0,
        where: Annotated[
            list[str] | None,
            typer.Option("--where", help="Only encounters with FIELD=VALUE (repeatable), e.g. age=[70-80)."),
        ] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many encounters.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the outcome sample.")] = 0,
    ) -> None:
        """Send the CLEAN test split through the API (with encounter ids), then feed their true outcomes."""
        from .replay_run import ReplayOptions, run_replay

        settings = settings_factory()
        token = token or (settings.reload_token.get_secret_value() if settings.reload_token else None)
        options = ReplayOptions(api_url, token, fraction, delay, list(where or []), limit, seed)
        summary = run_replay(settings.clean_url, options, console)
        out.print(f"replay: {summary}")


def print_report(out: Console, report: MonitorReport) -> None:
    """The monitor's results: one table of versions, calibration per band, the top drifting inputs, the action."""
    from rich.table import Table

    window = f"{report.window_start:%Y-%m-%d %H:%M} to {report.window_end:%Y-%m-%d %H:%M} UTC"
    versions = Table("version", "predictions", "with id", "matured", "coverage", "live ROC-AUC", "test ROC-AUC",
                     "Brier", title=f"Served versions, {window}")  # fmt: skip
    for v in report.versions:
        versions.add_row(
            v.model_version, f"{v.predictions:,}", f"{v.with_encounter:,}", f"{v.matured:,}", _num(v.coverage, ".1%"),
            _num(v.roc_auc, ".4f"), _num(v.test_roc_auc, ".4f"), _num(v.brier, ".4f"),
        )  # fmt: skip
    out.print(versions)
    for v in report.versions:
        bands = Table(
            "band",
            "matured",
            "mean predicted risk",
            "observed <30 rate",
            title=f"Calibration, version {v.model_version}",
        )
        for row in v.calibration:
            bands.add_row(
                row["band"], f"{row['outcomes']:,}", _num(row["predicted"], ".3f"), _num(row["observed"], ".3f")
            )
        out.print(bands)
        if v.drift_problem:
            out.print(f"drift of version {v.model_version} not measured: {v.drift_problem}")
        top = sorted(v.drift.items(), key=lambda kv: kv[1], reverse=True)[:10]
        if top:
            drift = Table("input", "PSI", "drifted", title=f"Top drifting inputs, version {v.model_version}")
            for name, value in top:
                drift.add_row(name, f"{value:.4f}", "yes" if value > report.thresholds.psi else "")
            out.print(drift)
    action = report.action or "none (no threshold crossed)"
    out.print(f"monitor: {len(report.versions)} version(s) served in the window; action: {action}")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
