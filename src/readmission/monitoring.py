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
from sqlalchemy import String, func, null, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from readmission import schema
from readmission.db import write_transaction
from readmission.drift import DEFAULT_PSI_THRESHOLD
from readmission.errors import short_reason
from readmission.prediction_table import (
    create_tables,
    ensure_log_columns,
    model_monitoring,
    prediction_log,
    prediction_outcomes,
)

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
    thumb (Siddiqi 2006); ``outcomes_stall_seconds``: the feed is called stalled after this long without one;
    ``min_drift_predictions``: served predictions of a version below which its PSI is not measured (PSI is
    biased upward on small samples, by about (bins - 1)(1/n + 1/N), Yurdakul 2018: with 100 rows from the
    training distribution itself, several inputs passed 0.25; with 1,000, none).
    """

    auc_drop: float = 0.05
    min_outcomes: int = 200
    psi: float = DEFAULT_PSI_THRESHOLD
    outcomes_stall_seconds: float = 3 * 86_400.0
    min_drift_predictions: int = 1_000


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


@dataclass(frozen=True)
class Windows:
    """A run's two windows, [start, end) in UTC: ``drift``, the last ``window`` (what is served now), and
    ``quality``, the same length ending ``horizon`` earlier (predictions whose outcomes have had time to come:
    a readmission within 30 days is known early, "no readmission" only after the horizon, so younger matured
    outcomes would be mostly the early ones)."""

    drift: tuple[dt.datetime, dt.datetime]
    quality: tuple[dt.datetime, dt.datetime]

    @classmethod
    def ending(cls, now: dt.datetime, window: dt.timedelta, horizon: dt.timedelta) -> Windows:
        return cls((now - window, now), (now - horizon - window, now - horizon))


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
    windows: Windows | None = None
    problem: str | None = None  # outcomes could not be joined (quality not measured); drift still is


def read_window(engine: Engine, start: dt.datetime, end: dt.datetime) -> tuple[pd.DataFrame, str | None]:
    """The predictions logged in [start, end) with their outcomes (``readmitted`` None when none), in the order
    they were made: one row per prediction, columns model_name, model_version, encounter_id, created_at (UTC),
    risk, risk_band, inputs, readmitted (object columns: ids above 2**53 stay exact). And why outcomes could not
    be joined (a log without the ``encounter_id`` column that this user may not add), else None."""
    log_t, out_t = prediction_log, prediction_outcomes
    create_tables(engine, prediction_log, prediction_outcomes)
    problem = None
    try:
        ensure_log_columns(engine)
    except DBAPIError as exc:  # drift is still measured; quality needs the ids
        problem = f"the log has no encounter_id column and this user may not add it ({short_reason(exc)})"
    encounter = log_t.c.encounter_id if problem is None else null().label("encounter_id")
    joined = log_t.outerjoin(out_t, log_t.c.encounter_id == out_t.c.encounter_id) if problem is None else log_t
    outcome = out_t.c.readmitted if problem is None else null().label("readmitted")
    query = (
        select(
            log_t.c.model_name, log_t.c.model_version, encounter, log_t.c.created_at,
            log_t.c.probability_within_30.label("risk"), log_t.c.risk_band, log_t.c.inputs, outcome,
        )
        .select_from(joined)
        .where(log_t.c.created_at >= _naive(engine, start), log_t.c.created_at < _naive(engine, end))
        .order_by(log_t.c.created_at, log_t.c.id)  # by time: replicas' writers flush out of order
    )  # fmt: skip
    columns = ["model_name", "model_version", "encounter_id", "created_at", "risk", "risk_band", "inputs", "readmitted"]
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).mappings().all(), columns=columns, dtype=object)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame, problem


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


def version_quality(rows: pd.DataFrame, reference: Reference, windows: Windows, limits: Thresholds) -> VersionQuality:
    """The quality and drift of one version's predictions (``read_window`` rows of one version): quality on the
    predictions made in ``windows.quality`` (old enough for their outcomes), drift on those in ``windows.drift``
    (the recent ones), measured only from ``limits.min_drift_predictions`` of them."""
    from readmission.drift import DriftError, psi, served_frame

    name, version = str(rows["model_name"].iloc[-1]), str(rows["model_version"].iloc[-1])
    mature = rows[(rows["created_at"] >= windows.quality[0]) & (rows["created_at"] < windows.quality[1])]
    recent = rows[rows["created_at"] >= windows.drift[0]]
    with_encounter, matured, auc, brier, bands = live_quality(mature)
    test_auc, profile, problem = reference(name, version)
    drift: dict[str, float] = {}
    if profile is not None and len(recent) < limits.min_drift_predictions:
        problem = f"{len(recent)} predictions in the window; drift is measured from {limits.min_drift_predictions}"
    elif profile is not None:
        try:
            drift = psi(profile, served_frame([_inputs(v) for v in recent["inputs"]]))
        except DriftError as exc:  # e.g. a logged row from before an input existed: quality is still reported
            problem = str(exc)
    return VersionQuality(
        name, version, len(recent), with_encounter, matured, auc, brier, test_auc, bands, drift, problem,
        rows["created_at"].iloc[-1].to_pydatetime(),
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
    *,
    horizon: dt.timedelta = dt.timedelta(0),
) -> MonitorReport:
    """One monitor run before ``now`` (``Windows.ending(now, window, horizon)``): computes, stores, decides.

    ``trigger(reason)`` starts retraining and returns what it did (None: retraining is off); it is called only
    when the version served last breaches a threshold and no run has triggered (or started triggering) within
    ``cooldown``. The results are stored before the trigger is called (its action "triggering ...", then what
    it did), so a run that fails after triggering still holds the cooldown. A trigger that fails is reported
    in ``action``, never raised. ``horizon`` 0 (the default) judges every outcome fed: what a replay needs.
    """
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)  # stored as UTC (SQLite and MySQL keep no offset)
    windows = Windows.ending(now, window, horizon)
    rows, problem = read_window(engine, windows.quality[0], now)
    versions = [
        version_quality(group, reference, windows, limits) for _, group in rows.groupby("model_version", sort=False)
    ]
    versions.sort(key=lambda v: v.last_served or windows.quality[0])
    report = MonitorReport(os.urandom(16).hex(), now, windows.quality[0], now, limits, versions, None, windows, problem)
    report.action = _decide(engine, report, trigger, cooldown)
    row_id = store_report(engine, report)
    if report.action is not None and report.action.startswith(TRIGGERING):
        assert trigger is not None
        report.action = _trigger(trigger, report.action.split(": ", 1)[1])
        update_action(engine, row_id, report.action)
    return report


TRIGGERING = "triggering"  # stored before the trigger is called: the cooldown counts it


def _decide(
    engine: Engine, report: MonitorReport, trigger: Callable[[str], str] | None, cooldown: dt.timedelta
) -> str | None:
    """What to do about the version served last: None (no breach), "not triggered (why): reason", or
    "triggering: reason" (the caller stores the results, then triggers)."""
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
    return f"{TRIGGERING}: {reason}"


def _trigger(trigger: Callable[[str], str], reason: str) -> str:
    """Call the trigger; what it did (or why it failed), in words."""
    try:
        return f"{TRIGGERED} {trigger(reason)}: {reason}"
    except Exception as exc:  # the results are stored whatever the trigger does
        log.error("retraining trigger failed: %s", exc)
        return f"trigger failed ({str(exc)[:400]}): {reason}"


def update_action(engine: Engine, row_id: int | None, action: str) -> None:
    """Replace the stored action of the run's last row (``store_report``'s id) with what the trigger did."""
    if row_id is None:
        return
    with write_transaction(engine) as conn:
        conn.execute(
            model_monitoring.update().where(model_monitoring.c.id == row_id).values(action=_fit(action, "action"))
        )


def last_trigger(engine: Engine) -> dt.datetime | None:
    """When a monitor run last triggered retraining, or began to (UTC), if ever."""
    table = model_monitoring
    create_tables(engine, table)  # the first run of a log: no results yet
    began = or_(table.c.action.like(f"{TRIGGERED} %"), table.c.action.like(f"{TRIGGERING}:%"))
    with engine.connect() as conn:
        when = conn.execute(select(func.max(table.c.run_at)).where(began)).scalar()
    return None if when is None else when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def store_report(engine: Engine, report: MonitorReport) -> int | None:
    """Write one ``model_monitoring`` row per version of ``report`` (none: nothing was served in the window,
    then one row without a version keeps the run's time for the metrics), in one transaction; the id of the
    last version's row (which holds the action), None without versions."""
    create_tables(engine, model_monitoring)
    horizon = report.windows.drift[1] - report.windows.quality[1] if report.windows else dt.timedelta(0)
    common = {
        "run_id": report.run_id, "run_at": report.run_at, "window_start": report.window_start,
        "window_end": report.window_end,
        "thresholds": {**asdict(report.thresholds), "outcome_horizon_seconds": horizon.total_seconds()},
    }  # fmt: skip
    rows = [
        {
            **common, "model_name": v.model_name, "model_version": v.model_version, "predictions": v.predictions,
            "with_encounter": v.with_encounter, "matured": v.matured, "roc_auc": v.roc_auc, "brier": v.brier,
            "test_roc_auc": v.test_roc_auc, "calibration": v.calibration, "drift": v.drift,
            "drift_problem": _fit(v.drift_problem or report.problem, "drift_problem"),
            "action": _fit(report.action, "action") if v is report.versions[-1] else None,
        }
        for v in report.versions
    ]  # fmt: skip
    if not rows:
        rows = [{**common, "model_name": "", "model_version": "", "predictions": 0, "with_encounter": 0,
                 "matured": 0, "calibration": [], "drift": {}, "action": None}]  # fmt: skip
    with write_transaction(engine) as conn:
        if len(rows) > 1:
            conn.execute(model_monitoring.insert(), rows[:-1])
        last = conn.execute(model_monitoring.insert(), rows[-1]).inserted_primary_key
    return int(last[0]) if report.versions and last else None


def _fit(text: str | None, column: str) -> str | None:
    """``text`` cut to the length of ``model_monitoring``'s ``column`` ("..." at the cut; the start, which says what
    was done, kept): PostgreSQL and MySQL refuse a longer one, and the run's results with it."""
    kind = model_monitoring.c[column].type
    assert isinstance(kind, String) and kind.length is not None
    return text if text is None or len(text) <= kind.length else text[: kind.length - 3] + "..."


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
            f"  band {b['band']}: {b['outcomes']} matured, mean predicted risk {_rate(b['predicted'])}, "
            f"observed <30 rate {_rate(b['observed'])}"
            for b in v.calibration
        )
        top = sorted(v.drift.items(), key=lambda kv: kv[1], reverse=True)[:5]
        lines.append(f"  top PSI: {', '.join(f'{k} {x:.3f}' for k, x in top) or v.drift_problem or '-'}")
    lines.append(f"action: {report.action or 'none (no threshold crossed)'}")
    return lines


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
