"""The documented settings are the real ones (every field of ApiSettings is in .env.example and back), and the
service refuses to start with an open or guessable POST /model/reload outside development."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from apisupport import free_port, wait_until
from pydantic import ValidationError

from inference_api.settings import ApiSettings, PredictionLogSettings, logging_level

HERE = Path(__file__).resolve().parents[1]
EXAMPLE = HERE / ".env.example"
TOKEN = "a-reload-token-long-enough"


def test_env_example_lists_exactly_the_settings_with_their_defaults() -> None:
    documented = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", EXAMPLE.read_text(), re.M))
    fields = {name.upper(): field for name, field in ApiSettings.model_fields.items()}
    assert set(documented) == set(fields)
    # The documented defaults (DEVELOPMENT_MODE=false, RELOAD_TOKEN empty) do not start by design: both
    # sides get the same token, so the comparison is about every other value.
    parsed = ApiSettings(_env_file=EXAMPLE, reload_token=TOKEN)  # type: ignore[call-arg]
    defaults = ApiSettings(_env_file=None, reload_token=TOKEN)  # type: ignore[call-arg]
    assert parsed == defaults, "a value in .env.example differs from the default it documents"
    assert documented["DEVELOPMENT_MODE"] == "false" and documented["RELOAD_TOKEN"] == ""


def test_bad_band_thresholds_name_the_setting() -> None:
    with pytest.raises(ValueError, match="RISK_BAND_THRESHOLDS"):
        ApiSettings(_env_file=None, risk_band_thresholds="high", development_mode=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(("value", "threads"), [("", None), ("  ", None), ("3", 3)])
def test_model_threads_empty_means_the_pods_cpus_and_a_number_is_taken(value: str, threads: int | None) -> None:
    with mock.patch.dict(os.environ, {"MODEL_THREADS": value}):
        assert ApiSettings(_env_file=None, development_mode=True).model_threads == threads  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_model_threads_names_the_setting(value: str) -> None:
    with mock.patch.dict(os.environ, {"MODEL_THREADS": value}), pytest.raises(ValidationError, match="model_threads"):
        ApiSettings(_env_file=None, development_mode=True)  # type: ignore[call-arg]


@pytest.mark.parametrize("blank", [None, "", " " * 20, "\t\n"])
def test_an_empty_reload_token_is_refused_outside_development(blank: str | None) -> None:
    with pytest.raises(ValidationError) as refused:
        ApiSettings(_env_file=None, reload_token=blank)  # type: ignore[call-arg]
    message = str(refused.value)
    assert "RELOAD_TOKEN is empty" in message and "DEVELOPMENT_MODE" in message
    assert "make k8s-secrets" in message and "DEVELOPMENT_MODE=true" in message


def test_development_mode_allows_an_empty_token_and_a_token_is_still_enforced_there() -> None:
    assert ApiSettings(_env_file=None, development_mode=True).reload_token is None  # type: ignore[call-arg]
    with_token = ApiSettings(_env_file=None, development_mode=True, reload_token=TOKEN)  # type: ignore[call-arg]
    assert with_token.reload_token is not None and with_token.reload_token.get_secret_value() == TOKEN


@pytest.mark.parametrize("development_mode", [False, True])
def test_a_short_reload_token_is_refused(development_mode: bool) -> None:
    with pytest.raises(ValidationError, match="RELOAD_TOKEN has 15 characters; use at least 16"):
        ApiSettings(_env_file=None, reload_token="x" * 15, development_mode=development_mode)  # type: ignore[call-arg]
    assert ApiSettings(_env_file=None, reload_token="x" * 16).reload_token is not None  # type: ignore[call-arg]


def test_the_cluster_config_map_turns_development_mode_off_explicitly() -> None:
    config = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (HERE / "config.env").read_text(), re.M))
    assert config["DEVELOPMENT_MODE"] == "false" and "RELOAD_TOKEN" not in config  # the token: the Secret
    assert "RELOAD_TOKEN=" in (HERE / "secrets.env.example").read_text()


def test_the_retention_job_needs_no_reload_token() -> None:
    settings = PredictionLogSettings(_env_file=None, prediction_log_retention_days=30)  # type: ignore[call-arg]
    assert settings.prediction_log_retention_days == 30 and settings.log_url.endswith("predictions.db")
    with pytest.raises(ValidationError, match="prediction_log_retention_days"):
        PredictionLogSettings(_env_file=None, prediction_log_retention_days=0)  # type: ignore[call-arg]


def test_the_service_does_not_start_without_a_token_outside_development(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"RELOAD_TOKEN", "DEVELOPMENT_MODE"}}
    env.update({"PORT": "1", "DATA_DIR": str(tmp_path)})  # never reached: the settings are refused first
    done = subprocess.run(
        [sys.executable, "-m", "inference_api"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    print(done.stderr)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("inference API: invalid settings, not starting:")
    assert "RELOAD_TOKEN is empty and DEVELOPMENT_MODE is not set" in done.stderr
    assert "make k8s-secrets" in done.stderr and "Traceback" not in done.stderr


def test_mlflow_credentials_in_dotenv_reach_the_mlflow_client(tmp_path: Path) -> None:
    """MLflow reads its user from the environment only; the settings carry them over from `.env` (an
    exported value wins). Was: `.env` credentials ignored, 503 UNAUTHENTICATED."""
    env_file = tmp_path / ".env"
    env_file.write_text("MLFLOW_TRACKING_USERNAME=inference\nMLFLOW_TRACKING_PASSWORD=from-the-dotenv-file\n")
    with mock.patch.dict(os.environ):  # restores the environment, the variables this test adds included
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)
        settings = ApiSettings(_env_file=env_file, development_mode=True)  # type: ignore[call-arg]
        settings.apply_mlflow_client_environment()
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "inference"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-dotenv-file"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = "exported"
        settings.apply_mlflow_client_environment()
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "exported"
    assert os.environ.get("MLFLOW_TRACKING_PASSWORD") != "exported"


@pytest.mark.parametrize("level", ["verbose", "warn", ""])
def test_an_unknown_log_level_names_the_setting_and_the_levels(level: str) -> None:
    with pytest.raises(ValidationError, match=r"(?s)log_level.*'critical', 'error', 'warning', 'info', 'debug'"):
        ApiSettings(_env_file=None, development_mode=True, log_level=level)  # type: ignore[call-arg]


def test_log_level_trace_is_uvicorns_level_in_any_case() -> None:
    settings = ApiSettings(_env_file=None, development_mode=True, log_level=" TRACE ")  # type: ignore[call-arg]
    assert settings.log_level == "trace"
    assert (
        logging_level(settings.log_level) == 5 and logging.getLevelName(5) == "TRACE"
    )  # (uvicorn.Config also names it)
    assert logging_level("warning") == logging.WARNING


@pytest.mark.slow
def test_the_service_starts_at_log_level_trace_and_says_the_protocol_path_is_off(tmp_path: Path) -> None:
    """At trace uvicorn wraps the app in its message logger (the protocol path cannot see the app): the
    service starts (it exited with "Unknown level: 'TRACE'" before logging knew the name) and says why."""
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "trace", "DEVELOPMENT_MODE": "true", "PORT": str(port),
           "DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "inference_api"], env=env, cwd=tmp_path, stderr=out)
    try:
        wait_until(lambda: "protocol path" in log.read_text() or process.poll() is not None, 120, "the start-up line")
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    text = log.read_text()
    assert "POST /predict: protocol path off: uvicorn serves the app inside MessageLoggerMiddleware" in text, text
