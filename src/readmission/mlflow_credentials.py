"""MLflow's user and password as settings: read from the environment or `.env` like every other setting,
and handed to the MLflow client, which reads only the environment (README, "Security")."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MlflowCredentials(BaseSettings):
    """The two fields, for the CLI's and the API's settings classes to inherit (their settings: `.env`, extra
    variables ignored)."""

    # allow_inf_nan=False: a float setting of inf or nan ("inf", "1e999") is refused naming the setting, where
    # pydantic takes it by default and a bound like gt=0 lets inf through (a wait or timeout that never ends).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True, allow_inf_nan=False)

    mlflow_tracking_username: str | None = Field(
        None,
        description="MLflow user on a server with access control (MLflow's own variable, also read from .env; "
        "README, Security). A value set in the environment wins.",
    )
    mlflow_tracking_password: SecretStr | None = Field(
        None, description="That user's password (MLflow's own variable, also read from .env)."
    )

    @field_validator("mlflow_tracking_username", "mlflow_tracking_password", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def export_mlflow_credentials(self) -> None:
        """Put them into MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, where the MLflow client reads them,
        without replacing an exported value."""
        if self.mlflow_tracking_username:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", self.mlflow_tracking_username)
        if self.mlflow_tracking_password is not None:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", self.mlflow_tracking_password.get_secret_value())
