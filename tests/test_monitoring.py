"""The monitor (``readmission.monitoring``) on real logs: predictions and outcomes seeded into SQLite, PostgreSQL and
MariaDB (the deployed log), a real local MLflow registry whose champion has its reference profile and test ROC-AUC
(tests/support/livesupport.py), and live quality checked against scikit-learn on the same rows."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livesupport import Champion, train_champion
from logsupport import log_row
from rich.console import Console
from sklearn.metrics import brier_score_loss, roc_auc_score
from sqlalchemy import create_engine, delete, select, text
from sqlalchemy.engine import Engine

from readmission import schema
from readmission.cli.loop_commands import print_report
from readmission.db import create_db_engine
from readmission.errors import ReadmissionError
from readmission.monitoring import (
    MonitorReport,
    Reference,
    Thresholds,
    Windows,
    read_window,
    registry_reference,
    report_lines,
    run_monitor,
    version_quality,
)
from readmission.names import MODEL_NAME
from readmission.outcomes import check_outcomes, record_outcomes
from readmission.prediction_table import model_monitoring, prediction_log, prediction_outcomes

NOW = dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=30)
HOUR = dt.timedelta(hours=1)
EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())  # three made-up patients: far from the training inputs
# What AirflowTarget.trigger answers for a paused DAG (tests/test_retraining.py): the longest it says.
PAUSED = (
    "run manual__2025-06-01T12:00:00.123456+00:00_AbCdEfGh of DAG 1-diabetes-training-pipeline at "
    "http://airflow-apiserver.airflow.svc.cluster.local:8080 (the DAG is paused: the run waits, queued, until "
    "someone unpauses it (the toggle in the Airflow UI, or `airflow dags unpause 1-diabetes-training-pipeline`))"
)
Row = tuple[int | None, float]  # (encounter_id, 30-day risk) of one logged prediction


def _band(risk: float) -> str:
    return "low" if risk < 0.15 else "medium" if risk < 0.30 else "high"  # RISK_BAND_THRESHOLDS' default


def _predict(engine: Engine, rows: list[Row], at: dt.datetime = NOW - HOUR, version: str = "1", **extra: Any) -> None:
    """Log ``rows`` as the API does (one request at ``at``), with the example patients' inputs unless given; the
    API creates the log's table only (the feed and the monitor create theirs)."""
    prediction_log.create(engine, checkfirst=True)
    logged = [
        {**log_row(at, i, EXAMPLES[i % len(EXAMPLES)]), "model_name": MODEL_NAME, "model_version": version,
         "encounter_id": e, "probability_within_30": r, "risk_band": _band(r), **extra}
        for i, (e, r) in enumerate(rows)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(prediction_log.insert(), logged)


def _observe(engine: Engine, labels: dict[int, str]) -> None:
    """Record outcomes through the feed's own code (the file and POST /outcomes use it)."""
    feed = [{"encounter_id": e, "readmitted": r, "observed_at": "2025-05-31"} for e, r in labels.items()]
    assert record_outcomes(engine, check_outcomes(feed, "test"), "file").recorded == len(labels)


def _degraded(engine: Engine, n: int = 40, version: str = "1", at: dt.datetime = NOW - HOUR) -> None:
    """``n`` matured encounters whose risk ranks them backwards (live ROC-AUC 0), ids from 1000 * version."""
    ids = [1000 * int(version) + i for i in range(n)]
    _predict(engine, [(e, 0.05 + 0.9 * i / n) for i, e in enumerate(ids)], at, version)
    _observe(engine, {e: "<30" if i < n // 4 else "NO" for i, e in enumerate(ids)})


def _none(_name: str, _version: str) -> tuple[float | None, dict[str, Any] | None, str | None]:
    return None, None, "no registry in this test"


def _test_auc(value: float) -> Reference:
    return lambda _name, _version: (value, None, "no reference profile in this test")


def _monitor(engine: Engine, reference: Reference = _none, **kwargs: Any) -> MonitorReport:
    kwargs.setdefault("now", NOW)
    return run_monitor(engine, reference, kwargs.pop("limits", SMALL), WINDOW, **kwargs)


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(model_monitoring).order_by(model_monitoring.c.id)).mappings()]


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    yield engine
    engine.dispose()


@contextlib.contextmanager
def _mysql_database(admin_url: str) -> Iterator[str]:
    """A scratch MariaDB database (its URL), dropped afterwards."""
    name = f"monitoring_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"{admin_url}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def log_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty prediction log on each backend the API logs to (MariaDB: the deployed one)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'log.db'}"
        elif request.param == "postgres":
            url = request.getfixturevalue("postgres").create()
        else:
            url = stack.enter_context(_mysql_database(request.getfixturevalue("mysql_admin_url")))
        engine = create_db_engine(url)
        stack.callback(engine.dispose)
        yield engine


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """A real local registry: v1, trained by the training job, with its reference profile and test ROC-AUC."""
    return train_champion(tmp_path_factory.mktemp("registry"))


def _registry(champion: Champion) -> Reference:
    from mlflow import MlflowClient

    return registry_reference(MlflowClient(champion.tracking_uri, champion.tracking_uri))


class Trigger:
    """A retraining trigger that remembers its reasons and answers ``answer`` (or raises it)."""

    def __init__(self, answer: str | Exception = PAUSED) -> None:
        self.answer, self.reasons = answer, list[str]()

    def __call__(self, reason: str) -> str:
        self.reasons.append(reason)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


SMALL = Thresholds(min_drift_predictions=1)  # these logs hold a few dozen predictions: measure their drift anyway


def _matured(rows: list[Row], labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(truth, risk) of the matured encounters, each with its latest answer: what scikit-learn is given."""
    latest = {e: r for e, r in rows if e is not None}
    matured = [e for e in latest if e in labels]
    return np.array([labels[e] == schema.POSITIVE_LABEL for e in matured]), np.array([latest[e] for e in matured])


def _kept(stored: str, action: str | None) -> bool:
    """Whether ``stored`` is ``action``, or its start cut to the column (PostgreSQL and MariaDB refuse more)."""
    return stored == action or (len(stored) == 512 and stored.endswith("...") and str(action).startswith(stored[:-3]))


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def test_live_roc_auc_and_brier_are_sklearns_on_the_latest_answer_per_matured_encounter(sqlite_log: Engine) -> None:
    rng = np.random.default_rng(5)
    rows: list[Row] = [(e, float(rng.uniform(0.01, 0.9))) for e in range(1, 121)]
    again: list[Row] = [(e, float(rng.uniform(0.01, 0.9))) for e in range(1, 11)]  # later answers: these count
    _predict(sqlite_log, [*rows, *[(None, 0.5)] * 5], at=NOW - 2 * HOUR)
    _predict(sqlite_log, again)
    labels = {e: str(rng.choice(schema.TARGET_LABELS)) for e in range(1, 81)}
    _observe(sqlite_log, labels)
    (v,) = _monitor(sqlite_log).versions
    truth, risk = _matured(rows + again, labels)
    assert (v.predictions, v.with_encounter, v.matured, v.coverage) == (135, 120, 80, 80 / 120)
    assert v.roc_auc == pytest.approx(roc_auc_score(truth, risk), abs=1e-12)
    assert v.brier == pytest.approx(brier_score_loss(truth, risk), abs=1e-12)


def test_an_encounter_predicted_twice_counts_once_with_its_latest_answer(sqlite_log: Engine) -> None:
    _predict(sqlite_log, [(1, 0.9), (2, 0.5)], at=NOW - 2 * HOUR)
    _predict(sqlite_log, [(1, 0.1)])
    _observe(sqlite_log, {1: "NO", 2: "<30"})
    (v,) = _monitor(sqlite_log).versions
    assert (v.predictions, v.with_encounter, v.matured) == (3, 2, 2)
    assert v.roc_auc == 1.0 and v.brier == pytest.approx((0.1**2 + 0.5**2) / 2)  # the first answer: ROC-AUC 0


def test_calibration_gives_each_band_its_matured_encounters_mean_risk_and_observed_rate(sqlite_log: Engine) -> None:
    _predict(sqlite_log, [(1, 0.05), (2, 0.10), (3, 0.20), (4, 0.6), (5, 0.8)])
    _observe(sqlite_log, {1: "NO", 2: "<30", 4: ">30", 5: "<30"})  # 3, the one medium, has not matured
    (v,) = _monitor(sqlite_log).versions
    assert v.calibration == [
        {"band": "low", "outcomes": 2, "predicted": pytest.approx(0.075), "observed": 0.5},
        {"band": "medium", "outcomes": 0, "predicted": None, "observed": None},
        {"band": "high", "outcomes": 2, "predicted": pytest.approx(0.7), "observed": 0.5},
    ]


def test_predictions_outside_the_window_are_ignored(log_engine: Engine) -> None:
    start = NOW - WINDOW
    for e, at in enumerate((start - dt.timedelta(seconds=1), start, NOW - HOUR, NOW, NOW + HOUR), start=1):
        _predict(log_engine, [(e, 0.1 * e)], at)
    _observe(log_engine, {1: "<30", 2: "NO", 3: "<30", 4: "NO", 5: "NO"})
    (v,) = _monitor(log_engine).versions
    assert (v.predictions, v.with_encounter, v.matured) == (2, 2, 2)  # [start, now): encounters 2 and 3
    assert v.roc_auc == 1.0 and v.brier == pytest.approx((0.2**2 + 0.7**2) / 2)


def _reset(engine: Engine) -> None:
    prediction_log.create(engine, checkfirst=True)
    prediction_outcomes.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(delete(prediction_outcomes))
        conn.execute(delete(prediction_log))


# Any id the contract allows, its two ends more often (neighbours at the top are 1 apart, as their floats are not).
IDS = (
    st.integers(1, 9)
    | st.integers(schema.MAX_ENCOUNTER_ID - 9, schema.MAX_ENCOUNTER_ID)
    | st.integers(1, schema.MAX_ENCOUNTER_ID)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    encounters=st.dictionaries(IDS, st.none() | st.sampled_from(schema.TARGET_LABELS), min_size=1),
    data=st.data(),
)
def test_any_log_gives_sklearns_quality_and_ordered_counts(
    sqlite_log: Engine, encounters: dict[int, str | None], data: st.DataObject
) -> None:
    """Generated encounters (any id the contract allows), outcomes (or none yet) and risks, predicted any number of
    times: matured <= with an id <= predictions, and ROC-AUC and Brier are scikit-learn's on the matured ones."""
    rows = data.draw(st.lists(st.tuples(st.sampled_from([*encounters, None]), st.floats(0, 1)), min_size=1))
    _reset(sqlite_log)
    _predict(sqlite_log, rows)
    labels = {e: label for e, label in encounters.items() if label is not None and e in {r[0] for r in rows}}
    if labels:
        _observe(sqlite_log, labels)
    logged, problem = read_window(sqlite_log, NOW - WINDOW, NOW)
    assert problem is None
    v = version_quality(logged, _none, Windows.ending(NOW, WINDOW, dt.timedelta(0)), Thresholds())
    truth, risk = _matured(rows, labels)
    assert v.matured <= v.with_encounter <= v.predictions == len(rows)
    assert (v.matured, v.with_encounter) == (len(truth), len({e for e, _ in rows if e is not None}))
    both = truth.any() and not truth.all()
    assert v.roc_auc == (pytest.approx(roc_auc_score(truth, risk), abs=1e-12) if both else None)
    assert v.brier == (pytest.approx(brier_score_loss(truth, risk), abs=1e-12) if len(truth) else None)


def _version_without_profile(champion: Champion) -> str:
    """A second version of the champion's model registered from a run that logged no reference profile (as
    versions trained before profiles were logged): its number."""
    from mlflow import MlflowClient

    client = MlflowClient(champion.tracking_uri, champion.tracking_uri)
    first = client.get_model_version(MODEL_NAME, "1")
    assert first.run_id and first.source
    run = client.create_run(client.get_run(first.run_id).info.experiment_id)
    client.set_terminated(run.info.run_id)
    return str(client.create_model_version(MODEL_NAME, first.source, run.info.run_id).version)


def test_a_version_without_a_reference_profile_reports_why_and_still_its_quality(
    sqlite_log: Engine, champion: Champion
) -> None:
    version = _version_without_profile(champion)
    _degraded(sqlite_log, 20, version, NOW - 2 * HOUR)
    _degraded(sqlite_log, 20, "12")  # a version the registry does not know
    old, unknown = _monitor(sqlite_log, _registry(champion)).versions
    assert old.drift_problem == (
        f"version {version} has no reference profile (trained before profiles were logged): retrain to measure drift"
    )
    assert unknown.drift_problem is not None and unknown.drift_problem.startswith("cannot read version 12 from the")
    assert [(v.drift, v.matured, v.roc_auc, v.test_roc_auc) for v in (old, unknown)] == [({}, 20, 0.0, None)] * 2
    assert [r["drift_problem"] for r in _stored(sqlite_log)] == [old.drift_problem, unknown.drift_problem]


def test_inputs_logged_before_the_history_inputs_existed_say_why_drift_is_not_measured(
    log_engine: Engine, champion: Champion
) -> None:
    older = {k: v for k, v in EXAMPLES[0].items() if k not in schema.HISTORY_FEATURE_NAMES}
    _predict(log_engine, [(1, 0.1), (2, 0.4)], inputs=older)
    _observe(log_engine, {1: "NO", 2: "<30"})
    (v,) = _monitor(log_engine, _registry(champion)).versions
    assert v.drift == {} and v.roc_auc == 1.0 and v.test_roc_auc is not None
    assert v.drift_problem == (f"logged inputs #0 lack the model input(s) {', '.join(schema.HISTORY_FEATURE_NAMES)}")
    assert _stored(log_engine)[0]["drift_problem"] == v.drift_problem


def test_an_empty_window_stores_one_row_without_a_version_and_prints(log_engine: Engine) -> None:
    report = _monitor(log_engine)
    assert report.versions == [] and report.action is None
    (row,) = _stored(log_engine)
    assert (row["run_id"], row["model_version"], row["predictions"], _utc(row["run_at"])) == (report.run_id, "", 0, NOW)
    assert report_lines(report)[1:] == ["action: none (no threshold crossed)"]
    console = Console(record=True, width=200)
    print_report(console, report)
    assert "monitor: 0 version(s) served in the window; action: none (no threshold crossed)" in console.export_text()


def test_an_auc_drop_breaches_only_with_enough_matured_outcomes_and_without_a_trigger_says_it_is_off(
    sqlite_log: Engine,
) -> None:
    _degraded(sqlite_log, 40)
    enough = _monitor(sqlite_log, _test_auc(0.7), limits=Thresholds(min_outcomes=40, min_drift_predictions=1)).action
    too_few = _monitor(sqlite_log, _test_auc(0.7), limits=Thresholds(min_outcomes=41, min_drift_predictions=1)).action
    within = _monitor(
        sqlite_log, _test_auc(0.05), limits=Thresholds(min_outcomes=40, min_drift_predictions=1)
    ).action  # drop = auc_drop
    assert enough == (
        "not triggered (retraining trigger off: set AIRFLOW_API_URL): version 1: live ROC-AUC 0.0000 is 0.7000 "
        "below the test ROC-AUC 0.7000 (40 matured outcomes)"
    )
    assert too_few is None and within is None


def test_only_the_version_served_last_can_trigger(sqlite_log: Engine) -> None:
    trigger, limits = Trigger(), Thresholds(min_outcomes=40, min_drift_predictions=1)
    _degraded(sqlite_log, 40, "1", NOW - 3 * HOUR)
    _predict(sqlite_log, [(None, 0.2)], NOW - 2 * HOUR, version="2")  # served after it: nothing to judge yet
    before = _monitor(sqlite_log, _test_auc(0.7), limits=limits, trigger=trigger)
    assert before.action is None and before.versions[0].breaches(limits) and trigger.reasons == []
    _predict(sqlite_log, [(None, 0.2)], NOW - HOUR, version="1")  # version 1 served again: now the last
    after = _monitor(sqlite_log, _test_auc(0.7), limits=limits, trigger=trigger)
    assert [v.model_version for v in after.versions] == ["2", "1"] and len(trigger.reasons) == 1
    assert after.action == f"triggered {PAUSED}: {trigger.reasons[0]}"


def test_the_trigger_fires_once_then_not_within_the_cooldown(log_engine: Engine, champion: Champion) -> None:
    """Live ROC-AUC and drift both breach, and the trigger answers as Airflow does for a paused DAG: the longest
    action there is, stored on every backend. The first run's time is given with another offset than UTC."""
    trigger, limits, reference = Trigger(), Thresholds(min_outcomes=40, min_drift_predictions=1), _registry(champion)
    _degraded(log_engine, 40)
    east = NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))
    runs = [_monitor(log_engine, reference, limits=limits, trigger=trigger, now=t) for t in (east, NOW + HOUR)]
    runs.append(_monitor(log_engine, reference, limits=limits, trigger=trigger, now=NOW + 25 * HOUR))
    reason = trigger.reasons[0]
    assert reason.startswith("version 1: live ROC-AUC 0.0000 is 0.69") and "input(s) drifted past PSI 0.25: " in reason
    assert len(trigger.reasons) == 2 and runs[0].action == f"triggered {PAUSED}: {reason}"
    assert runs[1].action == f"not triggered (one was triggered at 2025-06-01 12:00 UTC, within the cooldown): {reason}"
    assert runs[2].action == runs[0].action
    stored = _stored(log_engine)
    assert [_utc(r["run_at"]) for r in stored] == [NOW, NOW + HOUR, NOW + 25 * HOUR]
    assert all(_kept(r["action"], run.action) for r, run in zip(stored, runs, strict=True))
    assert len(runs[0].action or "") > len(stored[0]["action"]) == 512  # the column's length: the start kept


def test_a_trigger_that_raises_is_stored_as_failed_with_the_results(log_engine: Engine, champion: Champion) -> None:
    trigger, limits, reference = Trigger(), Thresholds(min_outcomes=40, min_drift_predictions=1), _registry(champion)
    _degraded(log_engine, 40)
    down = ReadmissionError(
        "Airflow at http://airflow-apiserver:8080/auth/token is unreachable (HTTPConnectionPool(host='airflow-"
        "apiserver', port=8080): Max retries exceeded with url: /auth/token (Caused by NewConnectionError: Failed to "
        "establish a new connection: [Errno 111] Connection refused)): check the URL and that the API server runs"
    )
    failed = _monitor(log_engine, reference, limits=limits, trigger=Trigger(down))
    assert failed.action is not None and failed.action.startswith(f"trigger failed ({str(down)[:400]}): version 1: ")
    (row,) = _stored(log_engine)
    assert _kept(row["action"], failed.action) and (row["matured"], row["roc_auc"]) == (40, 0.0) and row["drift"]
    retried = _monitor(log_engine, reference, limits=limits, trigger=trigger, now=NOW + HOUR)
    assert retried.action == f"triggered {PAUSED}: {trigger.reasons[0]}"  # a failure starts no cooldown


def test_drift_is_not_measured_on_too_few_predictions(sqlite_log: Engine, champion: Champion) -> None:
    """PSI is biased upward on small samples: below MONITOR_MIN_DRIFT_PREDICTIONS a version's drift is neither
    measured nor exported (so no alert, no retraining) and the report says why."""
    _predict(sqlite_log, [(i, 0.1) for i in range(1, 31)])
    report = _monitor(sqlite_log, _registry(champion), limits=Thresholds(min_drift_predictions=31))
    (version,) = report.versions
    assert version.drift == {} and version.drift_problem == "30 predictions in the window; drift is measured from 31"


def test_quality_is_judged_only_on_predictions_past_the_outcome_horizon(sqlite_log: Engine) -> None:
    """Before: with the window equal to the readmission horizon, the outcomes known inside it were mostly the
    early readmissions (a "NO" is known only after 30 days): live ROC-AUC was None and every band observed 1.0.
    Now quality is read from the window that ends ``horizon`` ago; drift from the recent one."""
    horizon = dt.timedelta(days=30)
    _predict(sqlite_log, [(1, 0.9), (2, 0.1)], at=NOW - horizon - HOUR)  # old enough: both outcomes known
    _predict(sqlite_log, [(3, 0.8)], at=NOW - HOUR)  # recent: only an early readmission can be known yet
    _observe(sqlite_log, {1: "<30", 2: "NO", 3: "<30"})
    report = run_monitor(sqlite_log, _none, SMALL, WINDOW, now=NOW, horizon=horizon)
    (version,) = report.versions
    assert (version.matured, version.with_encounter, version.roc_auc, version.predictions) == (2, 2, 1.0, 1)
    assert report.windows is not None and report.windows.quality == (NOW - horizon - WINDOW, NOW - horizon)
    assert _stored(sqlite_log)[0]["thresholds"]["outcome_horizon_seconds"] == horizon.total_seconds()
