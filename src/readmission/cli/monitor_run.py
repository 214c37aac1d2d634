"""`readmission monitor`'s work: the settings turned into a monitor run (engine, registry reference, trigger).

Also run by the cluster's CronJob (``python -m inference_api.monitor``, in the API's image, which has neither
typer nor rich): nothing here imports them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from readmission.monitoring import MonitorReport

    from .settings import Settings


def thresholds(settings: Settings):  # type: ignore[no-untyped-def]
    """The monitor's thresholds from the MONITOR_* settings."""
    from readmission.monitoring import Thresholds

    return Thresholds(
        auc_drop=settings.monitor_auc_drop,
        min_outcomes=settings.monitor_min_outcomes,
        psi=settings.monitor_psi_threshold,
        outcomes_stall_seconds=settings.monitor_outcomes_stall_hours * 3600.0,
        min_drift_predictions=settings.monitor_min_drift_predictions,
    )


def retraining_trigger(settings: Settings) -> Callable[[str], str] | None:
    """A function starting the training DAG with a reason (returns its dag run id), or None when
    AIRFLOW_API_URL is not set (the default: the monitor never triggers)."""
    if not settings.airflow_api_url:
        return None
    from readmission.errors import ReadmissionError
    from readmission.retraining import AirflowTarget

    password = settings.airflow_password.get_secret_value() if settings.airflow_password else ""
    if not password:
        raise ReadmissionError(
            f"AIRFLOW_API_URL is set ({settings.airflow_api_url}) but AIRFLOW_PASSWORD is empty: set the password of "
            f"AIRFLOW_USERNAME ({settings.airflow_username}), or empty AIRFLOW_API_URL to keep retraining off"
        )
    target = AirflowTarget(settings.airflow_api_url, settings.airflow_username, password, settings.airflow_dag_id)

    def trigger(reason: str) -> str:
        return target.trigger({"reason": reason, "source": "monitor"}, reason[:1000])

    return trigger


def run(settings: Settings) -> MonitorReport:
    """One monitor run on the prediction log of ``settings``, against the registry of ``settings``."""
    from mlflow import MlflowClient

    from readmission.monitoring import registry_reference, run_monitor
    from readmission.retention import open_prediction_log

    # Only reads (the MLflow user `inference` in the cluster may not create the experiment, as training does);
    # the registry is asked only about versions the window served.
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    engine = open_prediction_log(settings.log_url)  # PredictionLogMissingError: nothing logged there yet
    try:
        return run_monitor(
            engine,
            registry_reference(client),
            thresholds(settings),
            dt.timedelta(days=settings.monitor_window_days),
            retraining_trigger(settings),
            dt.timedelta(hours=settings.monitor_trigger_cooldown_hours),
            horizon=dt.timedelta(days=settings.monitor_outcome_horizon_days),
        )
    finally:
        engine.dispose()
