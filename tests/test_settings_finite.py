"""Every float setting of every settings class refuses inf and nan, naming the setting (review of #24).

pydantic takes "inf", "nan" and "1e999" for a float by default, and a bound like ``gt=0`` lets inf through:
MICROBATCH_MAX_WAIT_MS=inf made every batch wait with no end while another request was in flight. The
classes are listed here; the fields are found by type, so a float setting added later is covered.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from inference_api.settings import ApiSettings, PredictionLogSettings
from readmission.cli.settings import Settings as CliSettings
from readmission.mlflow_credentials import MlflowCredentials
from readmission_ui.settings import UiSettings

CLASSES: tuple[type[BaseSettings], ...] = (
    ApiSettings,
    PredictionLogSettings,
    CliSettings,
    MlflowCredentials,
    UiSettings,
)
# What each class needs to be valid apart from the field under test.
REQUIRED: dict[type[BaseSettings], dict[str, Any]] = {ApiSettings: {"development_mode": True}}


def _takes_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_float(a) for a in typing.get_args(annotation))
    return False


FLOAT_FIELDS = [(cls, name) for cls in CLASSES for name, f in cls.model_fields.items() if _takes_float(f.annotation)]


def test_there_are_float_settings_to_check() -> None:
    names = {name for _, name in FLOAT_FIELDS}
    assert {"microbatch_max_wait_ms", "predict_timeout_seconds", "api_timeout_seconds"} <= names


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(FLOAT_FIELDS), text=st.sampled_from(["inf", "-inf", "nan", "Infinity", "NaN", "1e999"]))
def test_a_float_setting_refuses_inf_and_nan_naming_it(field: tuple[type[BaseSettings], str], text: str) -> None:
    cls, name = field
    with pytest.MonkeyPatch.context() as env:
        for key in [name.upper(), *(k.upper() for k in REQUIRED.get(cls, {}))]:
            env.delenv(key, raising=False)
        env.setenv(name.upper(), text)
        with pytest.raises(ValidationError) as refused:
            cls(_env_file=None, **REQUIRED.get(cls, {}))  # type: ignore[call-arg]
    assert [e["loc"][0] for e in refused.value.errors()] == [name]
    assert refused.value.errors()[0]["type"] == "finite_number"
