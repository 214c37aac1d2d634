"""Settings of the inference API: one typed object, read from the environment (and `.env`).

Every knob is listed in `inference-api/.env.example`. MLflow's own variables (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_TOKEN, ...) pass through untouched. ``PredictionLogSettings`` is the part the retention job
(``python -m inference_api.retention``) needs: it runs without the API's reload token.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.logging import TRACE_LOG_LEVEL

from readmission.mlflow_credentials import MlflowCredentials
from readmission.names import CHAMPION, DEFAULT_RETENTION_DAYS, MODEL_NAME

MIN_RELOAD_TOKEN_CHARS = 16
# uvicorn's levels; "trace" (below debug) is uvicorn's own.
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def logging_level(level: LogLevel) -> int:
    """The ``logging`` level number of a LOG_LEVEL (``trace`` registered under its name, as uvicorn does)."""
    if level == "trace":
        logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")
        return TRACE_LOG_LEVEL
    return int(logging.getLevelName(level.upper()))


class PredictionLogSettings(BaseSettings):
    """Where the prediction log is and how long it keeps rows (shared by the API and the retention job)."""

    # allow_inf_nan=False: a float setting of inf or nan ("inf", "1e999") is refused naming the setting, where
    # pydantic takes it by default and a bound like gt=0 lets inf through (a wait or timeout that never ends).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True, allow_inf_nan=False)

    log_level: LogLevel = Field("info", description="Log level: critical, error, warning, info, debug, trace.")
    data_dir: Path = Field(Path("var"), description="Folder of the embedded defaults (local MLflow store, SQLite log).")
    prediction_log_url: str | None = Field(
        None, description="SQLAlchemy URL of the prediction log; default: SQLite file DATA_DIR/predictions.db."
    )
    prediction_log_retention_days: int = Field(
        DEFAULT_RETENTION_DAYS,
        ge=1,
        description="Days a prediction-log row is kept; older rows are deleted by the scheduled purge (the "
        "CronJob in the cluster, `readmission purge-predictions` embedded).",
    )
    quality_metrics_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the monitor's latest results and the outcome feed's last arrival are read from the "
        "log's database for /metrics (the monitor runs hourly; a minute's delay costs nothing).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("prediction_log_url", mode="before")
    @classmethod
    def _empty_log_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def log_url(self) -> str:
        """Prediction-log database URL, defaulting to an SQLite file."""
        return self.prediction_log_url or f"sqlite:///{self.data_dir / 'predictions.db'}"


class ApiSettings(PredictionLogSettings, MlflowCredentials):
    """What the service serves, where it logs, and how it batches."""

    host: str = Field("127.0.0.1", description="Address uvicorn listens on (0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn listens on.")
    instance_id: str = Field(
        "",
        description="This process's identity in /health/live (empty: a random one per process; `make run` sets "
        "it to know that the server answering on its port is its own child).",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow registry; default: the local store sqlite:///DATA_DIR/mlflow/mlflow.db."
    )
    model_name: str = Field(MODEL_NAME, description="Registered model to serve.")
    model_alias: str = Field(CHAMPION, description="Registry alias to serve and follow.")
    model_poll_interval_seconds: float = Field(30.0, gt=0, description="How often the registry alias is checked.")
    model_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between attempts while no model is loaded (backoff from 1 s)."
    )
    mlflow_http_request_max_retries: int = Field(
        0,
        ge=0,
        description="MLflow client retries of a failed registry call (MLflow's own variable; its default retries "
        "a dead server for minutes, while the poller has its own backoff). A value set in the environment wins.",
    )
    mlflow_http_request_timeout: int = Field(
        10, ge=1, description="Seconds an MLflow registry call may take (MLflow's own variable; the environment wins)."
    )
    reload_token: SecretStr | None = Field(
        None,
        description=f"Bearer token that POST /model/reload requires (at least {MIN_RELOAD_TOKEN_CHARS} characters); "
        "empty only with DEVELOPMENT_MODE.",
    )
    development_mode: bool = Field(
        False,
        description="Development only: allows an empty RELOAD_TOKEN, so POST /model/reload is open to anyone who "
        "reaches the port.",
    )

    prediction_log_queue_size: int = Field(
        100_000,
        ge=1,
        description="Rows held in memory while the log database is slow or down; beyond: dropped and counted.",
    )
    prediction_log_buffer_bytes: int = Field(
        192 * 2**20,
        ge=2**20,
        description=(
            "Serialised bytes of prediction-log rows held in memory (buffered, or sent to the writer process and "
            "not yet written); beyond: dropped and counted. Default 192 MiB: the writer process keeps a second "
            "copy of the unwritten bytes, so at most 2 x 192 = 384 MiB for the log; with the ~800 MiB measured "
            "after serving (server ~610 + writer ~175 + resource tracker ~13) that is ~1.2 GiB, leaving ~350 MiB "
            "of the pod's 1536 MiB memory limit (deployment.yaml) for request bodies."
        ),
    )
    prediction_log_batch_size: int = Field(
        500, ge=1, description="Rows per INSERT of the prediction-log writer process."
    )
    prediction_log_flush_seconds: float = Field(
        20.0, ge=0, description="On shutdown, how long the writer may take to write what is still queued."
    )

    max_batch_size: int = Field(1_000, ge=1, description="Most encounters accepted by POST /predict/batch.")
    max_body_bytes: int = Field(4_000_000, ge=1_024, description="Largest request body accepted (413 beyond).")
    risk_band_thresholds: str = Field(
        "0.15,0.30",
        description="Two ascending 30-day-risk cut points: below the first 'low', below the second 'medium', else 'high'.",
    )

    predict_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a model call (a MAX_BATCH_SIZE batch on a slow machine takes well under it); "
        "beyond: 504 prediction_timeout, and not ready while the call still runs.",
    )
    model_threads: int | None = Field(
        None,
        ge=1,
        description="Most threads scikit-learn's own pools (OpenMP, BLAS) may use in a model call on the pipeline "
        "and compiled-input paths; default: the CPUs this process may use (affinity, lowered to the cgroup CPU "
        "limit), where the libraries' default is every CPU of the node.",
    )
    microbatch_enabled: bool = Field(True, description="Gather concurrent requests and predict them as one batch.")
    microbatch_max_rows: int = Field(256, ge=1, description="Most rows predicted together.")
    microbatch_max_wait_ms: float = Field(
        2.0, ge=0, description="How long a batch may wait for more requests once the model is free (milliseconds)."
    )

    @field_validator("mlflow_tracking_uri", "reload_token", "model_threads", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # blanks count as empty too

    @model_validator(mode="after")
    def _check_bands(self) -> ApiSettings:
        _ = self.bands
        return self

    @model_validator(mode="after")
    def _check_reload_token(self) -> ApiSettings:
        """Refuse an open or guessable POST /model/reload outside development."""
        token = self.reload_token.get_secret_value() if self.reload_token is not None else ""
        if not token and not self.development_mode:
            raise ValueError(
                "RELOAD_TOKEN is empty and DEVELOPMENT_MODE is not set, so POST /model/reload would be open to "
                "anyone who reaches the port. In the cluster: `make k8s-secrets` writes a generated RELOAD_TOKEN "
                "into inference-api/secrets.env, then `kubectl apply -k inference-api`; on a laptop: set "
                f"DEVELOPMENT_MODE=true (or a RELOAD_TOKEN of at least {MIN_RELOAD_TOKEN_CHARS} characters)"
            )
        if token and len(token) < MIN_RELOAD_TOKEN_CHARS:
            raise ValueError(
                f"RELOAD_TOKEN has {len(token)} characters; use at least {MIN_RELOAD_TOKEN_CHARS} (`make k8s-secrets` "
                "generates one in the cluster; elsewhere: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        return self

    @property
    def tracking_uri(self) -> str:
        """MLflow URI, defaulting to the embedded local store the `readmission` command writes."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"

    def apply_mlflow_client_environment(self) -> None:
        """Put the MLflow client's retry and timeout settings into the environment, where MLflow reads them,
        without replacing a value the operator exported."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.mlflow_http_request_max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.mlflow_http_request_timeout))
        self.export_mlflow_credentials()

    @property
    def bands(self) -> tuple[float, float]:
        """The two risk-band cut points."""
        try:
            low, high = (float(v) for v in self.risk_band_thresholds.split(","))
        except ValueError:
            raise ValueError(
                f"RISK_BAND_THRESHOLDS must be two numbers like '0.15,0.30', got {self.risk_band_thresholds!r}"
            ) from None
        if not 0 < low < high < 1:
            raise ValueError(f"RISK_BAND_THRESHOLDS must be ascending and inside (0, 1), got {low}, {high}")
        return low, high


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_or_exit(cls: type[SettingsT], program: str) -> SettingsT:
    """``cls()`` from the environment; invalid settings end the process with status 2 and one line per
    problem naming the variable and the fix (no traceback)."""
    try:
        return cls()
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        print(f"{program}: invalid settings, not starting:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(2)


def _problem(error: Any) -> str:
    """One validation error as a line: the variable (when the error has one) and pydantic's message."""
    message = str(error["msg"]).removeprefix("Value error, ")
    field = ".".join(map(str, error["loc"])).upper()
    return f"{field}: {message}" if field else message
