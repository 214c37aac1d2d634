"""The monitor: live model quality and input drift of the served model versions, from the prediction log.

One run (``readmission monitor``; the cluster's CronJob runs the same command hourly) reads the predictions
logged in a time window, joins the outcomes recorded since (table ``prediction_outcomes``, by the caller's
``encounter_id``) and, per served model version, computes:

- ``matured``: distinct encounters predicted in the window whose outcome is recorded (an encounter predicted
  several times by one version counts once, with its latest prediction: the one its outcome answers);
  ``coverage`` = matured / encounters predicted with an id;
- ROC-AUC and Brier score of the 30-day risk P(<30) against ``readmitted == "<30"`` on the matured encounters
  (scikit-learn's ``roc_auc_score`` and ``brier_score_loss``), beside the version's test ROC-AUC (its registry
  tag ``test_roc_auc_30``, written at registration);
- calibration per risk band (the band the answer gave): encounters, mean predicted risk, observed rate;
- the PSI of every model input: all the window's predictions of the version against the version's reference
  profile (its training inputs, an artifact of its run; ``readmission.drift``).

The results are written to the table ``model_monitoring`` (one row per version, one ``run_id`` per run), which
the API serves as Prometheus metrics (so the monitor, a short-lived job, needs no scrape target of its own).
When the latest served version breaches a threshold (live ROC-AUC below its test ROC-AUC by more than
``auc_drop`` with at least ``min_outcomes`` matured outcomes, or any input's PSI above ``psi``), the monitor can
trigger the training DAG (``trigger``), at most once per cooldown; the DAG's gate still decides promotion.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from readmission import schema
from readmission.drift import DEFAULT_PSI_THRESHOLD
from readmission.prediction_table import ensure_log_columns, model_monitoring, prediction_log, prediction_outcomes

log = logging.getLogger(__name__)

BANDS = ("low", "medium", "high")
TRIGGERED = "triggered"  # how an action that started a DAG run begins (the API's metric reads it)


@dataclass(frozen=True)
class Thresholds:
    """When the monitor (and the alerts, which read these from its metrics) calls the model degraded.

    ``auc_drop``: ROC-AUC points the live value may fall below the test value (0.05: about the spread of the
    test ROC-AUC over patient-grouped splits times five, `readmission evaluate`); ``min_outcomes``: matured
    outcomes needed before the live ROC-AUC is judged (200: its standard error is then about 0.02-0.03,
    Hanley & McNeil 1982, at this outcome's 11 % prevalence); ``psi``: 0.25, the "significant shift" rule of
    thumb (Siddiqi 2006); ``outcomes_stall_seconds``: the feed is called stalled after this long without one.
    """

    auc_drop: float = 0.05
    min_outcomes: int = 200
    psi: float = DEFAULT_PSI_THRESHOLD
    outcomes_stall_seconds: float = 3 * 86_400.0


@dataclass
class VersionQuality:
    """One served version's window: counts, live quality, calibration rows, PSI per input."""

    model_name: str
    model_version: str
    predictions: int
    with_encounter: int
    matured: int
    roc_auc: float | None
    brier: float | None
    test_roc_auc: float | None
    calibration: list[dict[str, Any]]
    drift: dict[str, float] = field(default_factory=dict)
    drift_problem: str | None = None
    last_served: dt.datetime | None = None

    @property
    def coverage(self) -> float | None:
        """Matured / encounters predicted with an id (None without any)."""
        return self.matured / self.with_encounter if self.with_encounter else None

    def breaches(self, limits: Thresholds) -> list[str]:
        """Why this version is degraded (empty: it is not), in words."""
        found = []
        live, test = self.roc_auc, self.test_roc_auc
        if (
            live is not None
            and test is not None
            and self.matured >= limits.min_outcomes
            and test - live > limits.auc_drop
        ):
            found.append(
                f"live ROC-AUC {live:.4f} is {test - live:.4f} below the test ROC-AUC {test:.4f} "
                f"({self.matured} matured outcomes)"
            )
        drifting = sorted(((v, k) for k, v in self.drift.items() if v > limits.psi), reverse=True)
        if drifting:
            listed = ", ".join(f"{k} {v:.3f}" for v, k in drifting[:5])
            found.append(f"{len(drifting)} input(s) drifted past PSI {limits.psi}: {listed}")
        return found


@dataclass
class MonitorReport:
    """One monitor run: its window, thresholds, the versions served in the window, and what it did."""

    run_id: str
    run_at: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    thresholds: Thresholds
    versions: list[VersionQuality]
    action: str | None = None


def read_window(engine: Engine, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The predictions logged in [start, end) with their outcomes (``readmitted`` NA when none): one row per
    prediction, columns model_name, model_version, encounter_id, created_at, risk, risk_band, inputs,
    readmitted. Tables a log has not made yet (no outcomes so far) read as empty."""
    log_t, out_t = prediction_log, prediction_outcomes
    prediction_log.create(engine, checkfirst=True)
    ensure_log_columns(engine)
    prediction_outcomes.create(engine, checkfirst=True)
    query = (
        select(
            log_t.c.model_name, log_t.c.model_version, log_t.c.encounter_id, log_t.c.created_at,
            log_t.c.probability_within_30.label("risk"), log_t.c.risk_band, log_t.c.inputs, out_t.c.readmitted,
        )
        .select_from(log_t.outerjoin(out_t, log_t.c.encounter_id == out_t.c.encounter_id))
        .where(log_t.c.created_at >= _naive(engine, start), log_t.c.created_at < _naive(engine, end))
        .order_by(log_t.c.id)
    )  # fmt: skip
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).mappings().all())
    columns = ["model_name", "model_version", "encounter_id", "created_at", "risk", "risk_band", "inputs", "readmitted"]
    return frame if not frame.empty else pd.DataFrame(columns=columns)


def _naive(engine: Engine, when: dt.datetime) -> dt.datetime:
    """``when`` as the log stores it: UTC, without a zone on MySQL and SQLite."""
    utc = when.astimezone(dt.UTC)
    return utc if engine.dialect.name == "postgresql" else utc.replace(tzinfo=None)


def live_quality(rows: pd.DataFrame) -> tuple[int, int, float | None, float | None, list[dict[str, Any]]]:
    """Of one version's predictions (``read_window`` rows): encounters with an id, matured encounters, ROC-AUC
    and Brier score of the 30-day risk on the matured ones (None when they hold one class only or none), and
    the calibration rows per band. An encounter predicted more than once counts once, with its latest answer."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    known = rows[rows["encounter_id"].notna()]
    latest = known.drop_duplicates("encounter_id", keep="last")  # rows are in log order
    matured = latest[latest["readmitted"].notna()]
    truth = (matured["readmitted"] == schema.POSITIVE_LABEL).to_numpy()
    risk = matured["risk"].to_numpy(dtype=float)
    both = bool(truth.any() and not truth.all())
    auc = float(roc_auc_score(truth, risk)) if both else None
    brier = float(brier_score_loss(truth, risk)) if len(matured) else None
    return len(latest), len(matured), auc, brier, calibration(matured["risk_band"], risk, truth)


def calibration(bands: pd.Series, risk: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    """Per risk band: matured encounters, mean predicted 30-day risk, observed rate of ``<30`` (None if empty)."""
    out = []
    for band in BANDS:
        mask = (bands == band).to_numpy()
        n = int(mask.sum())
        out.append(
            {
                "band": band,
                "outcomes": n,
                "predicted": float(risk[mask].mean()) if n else None,
                "observed": float(truth[mask].mean()) if n else None,
            }
        )
    return out


Reference = Callable[[str, str], tuple[float | None, dict[str, Any] | None, str | None]]
"""(model name, version) -> (test ROC-AUC, reference profile, why there is no profile)."""


def version_quality(rows: pd.DataFrame, reference: Reference) -> VersionQuality:
    """The quality and drift of one version's predictions (``read_window`` rows of one version)."""
    from readmission.drift import DriftError, psi, served_frame

    name, version = str(rows["model_name"].iloc[-1]), str(rows["model_version"].iloc[-1])
    with_encounter, matured, auc, brier, bands = live_quality(rows)
    test_auc, profile, problem = reference(name, version)
    drift: dict[str, float] = {}
    if profile is not None:
        try:
            drift = psi(profile, served_frame([_inputs(v) for v in rows["inputs"]]))
        except DriftError as exc:  # e.g. a logged row from before an input existed: quality is still reported
            problem = f"drift of version {version} not measured: {exc}"
    return VersionQuality(
        name, version, len(rows), with_encounter, matured, auc, brier, test_auc, bands, drift, problem,
        pd.Timestamp(rows["created_at"].iloc[-1]).to_pydatetime(),
    )  # fmt: skip


def _inputs(value: Any) -> dict[str, Any]:
    """A logged ``inputs`` cell as a dict (drivers return JSON either parsed or as text)."""
    if isinstance(value, str):
        import json

        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return dict(value)


def run_monitor(
    engine: Engine,
    reference: Reference,
    limits: Thresholds,
    window: dt.timedelta,
    trigger: Callable[[str], str] | None = None,
    cooldown: dt.timedelta = dt.timedelta(hours=24),
    now: dt.datetime | None = None,
) -> MonitorReport:
    """One monitor run over the ``window`` before ``now``: computes, decides, stores the results.

    ``trigger(reason)`` starts retraining and returns what it did (None: retraining is off); it is called only
    when the version served last breaches a threshold and no run has triggered within ``cooldown``. A trigger
    that fails is reported in ``action`` (and stored), never raised: the results are stored either way.
    """
    now = now or dt.datetime.now(dt.UTC)
    start = now - window
    rows = read_window(engine, start, now)
    versions = [version_quality(group, reference) for _, group in rows.groupby("model_version", sort=False)]
    versions.sort(key=lambda v: v.last_served or start)
    report = MonitorReport(os.urandom(16).hex(), now, start, now, limits, versions)
    report.action = _act(engine, report, trigger, cooldown)
    store_report(engine, report)
    return report


def _act(
    engine: Engine, report: MonitorReport, trigger: Callable[[str], str] | None, cooldown: dt.timedelta
) -> str | None:
    """Trigger retraining when the version served last breaches a threshold; what was done, in words."""
    if not report.versions:
        return None
    latest = report.versions[-1]
    reasons = latest.breaches(report.thresholds)
    if not reasons:
        return None
    reason = f"version {latest.model_version}: " + "; ".join(reasons)
    if trigger is None:
        return f"not triggered (retraining trigger off: set AIRFLOW_API_URL): {reason}"
    since = last_trigger(engine)
    if since is not None and report.run_at - since < cooldown:
        return f"not triggered (one was triggered at {since:%Y-%m-%d %H:%M} UTC, within the cooldown): {reason}"
    try:
        return f"{TRIGGERED} {trigger(reason)}: {reason}"
    except Exception as exc:  # the results are stored whatever the trigger does
        log.error("retraining trigger failed: %s", exc)
        return f"trigger failed ({str(exc)[:200]}): {reason}"


def last_trigger(engine: Engine) -> dt.datetime | None:
    """When a monitor run last triggered retraining (UTC), if ever."""
    table = model_monitoring
    with engine.connect() as conn:
        when = conn.execute(select(func.max(table.c.run_at)).where(table.c.action.like(f"{TRIGGERED} %"))).scalar()
    return None if when is None else when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def store_report(engine: Engine, report: MonitorReport) -> None:
    """Write one ``model_monitoring`` row per version of ``report`` (none: nothing was served in the window,
    then one row without a version keeps the run's time for the metrics)."""
    model_monitoring.create(engine, checkfirst=True)
    common = {
        "run_id": report.run_id, "run_at": report.run_at, "window_start": report.window_start,
        "window_end": report.window_end, "thresholds": asdict(report.thresholds),
    }  # fmt: skip
    rows = [
        {
            **common, "model_name": v.model_name, "model_version": v.model_version, "predictions": v.predictions,
            "with_encounter": v.with_encounter, "matured": v.matured, "roc_auc": v.roc_auc, "brier": v.brier,
            "test_roc_auc": v.test_roc_auc, "calibration": v.calibration, "drift": v.drift,
            "drift_problem": v.drift_problem, "action": report.action if v is report.versions[-1] else None,
        }
        for v in report.versions
    ]  # fmt: skip
    if not rows:
        rows = [{**common, "model_name": "", "model_version": "", "predictions": 0, "with_encounter": 0,
                 "matured": 0, "calibration": [], "drift": {}, "action": None}]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(model_monitoring.insert(), rows)


def registry_reference(client: Any) -> Reference:
    """A ``Reference`` read from the MLflow registry through ``client``: the version's ``test_roc_auc_30`` tag
    and the reference profile logged on its run (``readmission.drift.load_profile``). A registry error is
    reported as the reason there is no profile (the quality is still computed)."""
    from readmission.drift import load_profile

    cache: dict[tuple[str, str], tuple[float | None, dict[str, Any] | None, str | None]] = {}

    def reference(name: str, version: str) -> tuple[float | None, dict[str, Any] | None, str | None]:
        if (name, version) not in cache:
            try:
                found = client.get_model_version(name, version)
                tag = found.tags.get("test_roc_auc_30")
                profile = load_profile(client, found.run_id)
                problem = (
                    None
                    if profile is not None
                    else f"version {version} has no reference profile (trained before profiles were logged): retrain to measure drift"
                )
                cache[name, version] = (float(tag) if tag else None, profile, problem)
            except Exception as exc:
                cache[name, version] = (
                    None,
                    None,
                    f"cannot read version {version} from the registry: {str(exc)[:200]}",
                )
        return cache[name, version]

    return reference


def report_lines(report: MonitorReport) -> list[str]:
    """The report as plain log lines (the CronJob's log): one per version, its calibration, top drift, action."""
    lines = [
        f"monitor run {report.run_id}: {len(report.versions)} version(s) served since {report.window_start:%Y-%m-%d %H:%M} UTC"
    ]
    for v in report.versions:
        live = "-" if v.roc_auc is None else f"{v.roc_auc:.4f}"
        test = "-" if v.test_roc_auc is None else f"{v.test_roc_auc:.4f}"
        lines.append(
            f"version {v.model_version}: {v.predictions} predictions, {v.matured}/{v.with_encounter} matured, "
            f"live ROC-AUC {live} (test {test}), Brier {'-' if v.brier is None else f'{v.brier:.4f}'}"
        )
        lines.extend(
            f"  band {b['band']}: {b['outcomes']} matured, predicted {b['predicted']}, observed {b['observed']}"
            for b in v.calibration
        )
        top = sorted(v.drift.items(), key=lambda kv: kv[1], reverse=True)[:5]
        lines.append(f"  top PSI: {', '.join(f'{k} {x:.3f}' for k, x in top) or v.drift_problem or '-'}")
    lines.append(f"action: {report.action or 'none (no threshold crossed)'}")
    return lines
