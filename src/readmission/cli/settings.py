"""Settings of the `readmission` command: one typed object, every knob documented once.

Read from the environment (and a `.env` file in the working directory). `.env.example` lists them all.
The library modules never read the environment; the CLI passes these values in.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from readmission.mlflow_credentials import MlflowCredentials
from readmission.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_FIT_ROWS, DEFAULT_RETENTION_DAYS
from readmission.source import UCI_ZIP_URL


class Settings(MlflowCredentials):
    """Where the data comes from and where it goes."""

    # allow_inf_nan=False: a float setting of inf or nan ("inf", "1e999") is refused naming the setting, where
    # pydantic takes it by default and a bound like gt=0 lets inf through (a wait or timeout that never ends).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True, allow_inf_nan=False)

    data_dir: Path = Field(Path("var"), description="Folder for the download cache and the embedded SQLite files.")
    data_path: Path | None = Field(None, description="Local diabetic_data.csv or UCI zip; skips the download.")
    data_url: str = Field(UCI_ZIP_URL, description="Where the official UCI zip is downloaded from.")
    download_timeout_seconds: float = Field(60.0, gt=0, description="Network timeout of the download.")
    raw_database_url: str | None = Field(
        None, description="SQLAlchemy URL of the RAW database; default: SQLite file DATA_DIR/raw.db."
    )
    clean_database_url: str | None = Field(
        None, description="SQLAlchemy URL of the CLEAN database; default: SQLite file DATA_DIR/clean.db."
    )
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, description="Rows per RAW batch (one transaction each).")
    split_seed: int = Field(42, ge=0, description="Seed of the patient-grouped train/validation/test split.")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patients in the validation split.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patients in the test split.")

    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: local store sqlite:///DATA_DIR/mlflow/mlflow.db."
    )
    mlflow_http_request_max_retries: int = Field(
        3,
        ge=0,
        description="MLflow client retries of a failed registry call (MLflow's own variable: its default of 7 "
        "keeps a command waiting minutes on a dead server). A value set in the environment wins.",
    )
    mlflow_http_request_timeout: int = Field(
        30,
        ge=1,
        description="Seconds one MLflow registry call may take (MLflow's own variable, default 120: with the "
        "retries, minutes on a server that drops packets). A value set in the environment wins.",
    )
    train_time_budget_seconds: float = Field(
        240.0,
        gt=0,
        description="Target seconds for the whole training, not a hard cap: hyper-parameter trials shared by the "
        "families (a further trial starts only if the slowest so far fits; each family's first trial always runs), "
        "then selection, importance, plots and registration (a fifth, 60 s at most). 135-262 s measured for 240 on the full data.",
    )
    train_max_trials: int | None = Field(
        None,
        ge=1,
        description="Hyper-parameter trials per family at most; empty: as many as the time budget allows. Set it "
        "for runs that do not depend on the machine's speed.",
    )
    train_max_fit_rows: int = Field(
        DEFAULT_MAX_FIT_ROWS,
        ge=1_000,
        description="When the train split holds more rows, train and validation are cut to the same share of "
        "their patients, about this many train rows (drawn by a hash of patient_nbr: the same on every run with "
        "the same TRAIN_SEED; the refit on train + validation fits about 1.2 times it) and the run is tagged "
        "data.fit_sample; the test split is never cut. The UCI file (69,641 train rows) is fitted whole.",
    )
    train_families: str = Field(
        "logistic_regression,hist_gradient_boosting,random_forest",
        description="Comma-separated model families to train.",
    )
    train_seed: int = Field(0, ge=0, description="Seed of the models' own randomness.")
    promotion_min_improvement: float = Field(
        0.0, ge=0, description="ROC-AUC (<30) a candidate must gain over the champion to replace it."
    )
    prediction_log_url: str | None = Field(
        None,
        description="The inference API's prediction log (same variable as the API's); default: SQLite file "
        "DATA_DIR/predictions.db, where the embedded API writes it.",
    )
    prediction_log_retention_days: int = Field(
        DEFAULT_RETENTION_DAYS, ge=1, description="Days `purge-predictions` keeps (same variable as the API's)."
    )

    monitor_window_days: float = Field(
        30.0, gt=0, description="`monitor`: days of predictions each run looks at (their outcomes may come later)."
    )
    monitor_outcome_horizon_days: float = Field(
        30.0,
        ge=0,
        description="`monitor`: live quality is judged on predictions at least this old, whose outcomes have had time "
        "to come (30: the readmission window; add the feed's lag). 0 judges every outcome fed (a replay).",
    )
    monitor_min_drift_predictions: int = Field(
        1_000, ge=1, description="`monitor`: served predictions of a version below which its drift is not measured."
    )
    monitor_auc_drop: float = Field(
        0.05, gt=0, lt=1, description="`monitor`: live ROC-AUC points below the test ROC-AUC that count as degraded."
    )
    monitor_min_outcomes: int = Field(
        200, ge=1, description="`monitor`: matured outcomes needed before the live ROC-AUC is judged."
    )
    monitor_psi_threshold: float = Field(
        0.25, gt=0, description="`monitor`: PSI of a model input above which it has drifted (Siddiqi 2006: 0.25)."
    )
    monitor_outcomes_stall_hours: float = Field(
        72.0, gt=0, description="Hours without a recorded outcome after which the alert OutcomeFeedStalled fires."
    )
    monitor_trigger_cooldown_hours: float = Field(
        24.0, ge=0, description="`monitor`: hours after a triggered retraining before it triggers another."
    )
    reload_token: SecretStr | None = Field(
        None, description="`replay`: the API's RELOAD_TOKEN (same variable), sent to POST /outcomes; --token wins."
    )
    airflow_api_url: str | None = Field(
        None,
        description="`monitor`: Airflow's API server (e.g. http://airflow-vm:8080); set it to let the monitor "
        "trigger the training DAG when quality or drift crosses its threshold. Empty: never triggers (default).",
    )
    airflow_username: str = Field("admin", description="`monitor`: Airflow user allowed to trigger the DAG.")
    airflow_password: SecretStr | None = Field(None, description="`monitor`: that user's password (a Secret).")
    airflow_dag_id: str = Field("1-diabetes-training-pipeline", description="`monitor`: the DAG it triggers.")

    @field_validator(
        "airflow_api_url",
        "reload_token",
        "raw_database_url",
        "clean_database_url",
        "data_path",
        "mlflow_tracking_uri",
        "train_max_trials",
        "prediction_log_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def raw_url(self) -> str:
        """RAW database URL, defaulting to the embedded SQLite file."""
        return self.raw_database_url or f"sqlite:///{self.data_dir / 'raw.db'}"

    @property
    def clean_url(self) -> str:
        """CLEAN database URL, defaulting to the embedded SQLite file."""
        return self.clean_database_url or f"sqlite:///{self.data_dir / 'clean.db'}"

    @property
    def log_url(self) -> str:
        """The inference API's prediction log, defaulting to the embedded SQLite file."""
        return self.prediction_log_url or f"sqlite:///{self.data_dir / 'predictions.db'}"

    @property
    def tracking_uri(self) -> str:
        """MLflow URI, defaulting to the embedded local store."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Artifact folder of the embedded store; None for a server, which decides (proxied to S3/MinIO)."""
        if self.mlflow_tracking_uri:
            return None
        return (self.data_dir / "mlflow" / "artifacts").resolve().as_uri()

    @property
    def families(self) -> tuple[str, ...]:
        """The model families to train."""
        return tuple(f.strip() for f in self.train_families.split(",") if f.strip())
