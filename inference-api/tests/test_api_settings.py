"""The documented settings are the real ones: every field of ApiSettings is in .env.example and back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference_api.settings import ApiSettings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_env_example_lists_exactly_the_settings_with_their_defaults() -> None:
    documented = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", EXAMPLE.read_text(), re.M))
    fields = {name.upper(): field for name, field in ApiSettings.model_fields.items()}
    assert set(documented) == set(fields)
    parsed = ApiSettings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    defaults = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    assert parsed == defaults, "a value in .env.example differs from the default it documents"


def test_bad_band_thresholds_name_the_setting() -> None:
    with pytest.raises(ValueError, match="RISK_BAND_THRESHOLDS"):
        ApiSettings(_env_file=None, risk_band_thresholds="high")  # type: ignore[call-arg]
