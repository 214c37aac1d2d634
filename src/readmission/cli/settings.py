"""Settings of the `readmission` command: one typed object, every knob documented once.

Read from the environment (and a `.env` file in the working directory). `.env.example` lists them all.
The library modules never read the environment; the CLI passes these values in.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from readmission.raw import DEFAULT_BATCH_SIZE
from readmission.source import UCI_ZIP_URL


class Settings(BaseSettings):
    """Where the data comes from and where it goes."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

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

    @field_validator("raw_database_url", "clean_database_url", "data_path", mode="before")
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
