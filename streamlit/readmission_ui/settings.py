"""Settings of the UI process, from the environment (or a .env file); see streamlit/.env.example."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class UiSettings(BaseSettings):
    """Where the API is and how the page talks to it."""

    # allow_inf_nan=False: a float setting of inf or nan ("inf", "1e999") is refused naming the setting, where
    # pydantic takes it by default and a bound like gt=0 lets inf through (a wait or timeout that never ends).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", allow_inf_nan=False)

    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the inference API.")
    api_timeout_seconds: float = Field(15.0, gt=0, description="Seconds to wait for one API answer.")
    batch_chunk_rows: int = Field(
        500, ge=1, le=1000, description="Encounters per POST /predict/batch (at most the API's MAX_BATCH_SIZE)."
    )
    max_upload_rows: int = Field(100_000, ge=1, description="Rows a batch file may hold.")

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"API_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")
