"""Ambiguous or mistyped JSON and encounters outside the model's population get a 422 that names the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from inference_api.app import create_app
from inference_api.contract import BatchRequest, InvalidBodyError, parse_body
from readmission import schema

EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", max_batch_size=5))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


def _with_repeat(encounter: dict[str, Any], key: str, value: Any) -> bytes:
    """``encounter`` as JSON with ``key`` sent a second time, last, holding ``value``."""
    return json.dumps(encounter).encode()[:-1] + f", {json.dumps(key)}: {json.dumps(value)}}}".encode()


def test_a_repeated_key_is_422_naming_it_not_the_last_value_silently(client: TestClient) -> None:
    """Before: 200, `age` taken from the last occurrence; a batch's first `encounters` list dropped."""
    single = client.post("/predict", content=_with_repeat(EXAMPLES[0], "age", "[10-20)"))
    assert single.status_code == 422
    assert single.json()["error"] == "duplicate_key" and [e["field"] for e in single.json()["errors"]] == ["age"]
    lists = json.dumps({"encounters": EXAMPLES[:1]})[:-1] + ', "encounters": ' + json.dumps(EXAMPLES[1:3]) + "}"
    batch = client.post("/predict/batch", content=lists.encode())
    assert batch.status_code == 422 and [e["field"] for e in batch.json()["errors"]] == ["encounters"]
    inner = '{"encounters": [' + json.dumps(EXAMPLES[0]) + ", " + _with_repeat(EXAMPLES[1], "race", None).decode()
    nested = client.post("/predict/batch", content=(inner + "]}").encode())
    assert [e["field"] for e in nested.json()["errors"]] == ["encounters[1].race"]


def test_a_code_sent_as_a_string_asks_for_a_number_and_lists_numbers(client: TestClient) -> None:
    """Before: the `allowed` list showed "1", the very string that was refused."""
    response = client.post("/predict", json={**EXAMPLES[0], "admission_type_id": "1", "time_in_hospital": "3"})
    assert response.status_code == 422
    by_field = {e["field"]: e for e in response.json()["errors"]}
    assert by_field["admission_type_id"]["allowed"] == [int(v) for v in schema.column("admission_type_id").levels]
    assert by_field["admission_type_id"]["message"].startswith("send a JSON number, not the string '1'")
    assert by_field["time_in_hospital"]["message"].startswith("send a JSON number, not the string '3'")


@pytest.mark.parametrize("code", sorted(schema.DEATH_OR_HOSPICE_DISCHARGE_IDS))
def test_an_encounter_ending_in_death_or_hospice_is_not_eligible(client: TestClient, code: int) -> None:
    """Before: 200 with a 'low' risk for a patient who died (code 11)."""
    response = client.post("/predict", json={**EXAMPLES[0], "discharge_disposition_id": code})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "not_eligible"
    assert body["errors"][0]["field"] == "discharge_disposition_id"
    assert "death or hospice" in body["errors"][0]["message"]
    batch = client.post(
        "/predict/batch", json={"encounters": [EXAMPLES[0], {**EXAMPLES[1], "discharge_disposition_id": code}]}
    )
    assert batch.status_code == 422
    assert [e["field"] for e in batch.json()["errors"]] == ["encounters[1].discharge_disposition_id"]


FORMATS = st.sampled_from([{}, {"indent": 2}, {"separators": (" , ", " : ")}, {"separators": (",", ":")}])


@settings(max_examples=150, deadline=None)
@given(
    example=st.sampled_from(EXAMPLES),
    repeated=st.lists(st.sampled_from(schema.FEATURE_NAMES), min_size=0, max_size=3, unique=True),
    fmt=FORMATS,
    donor=st.sampled_from(EXAMPLES),
)
def test_any_repeated_key_in_any_layout_is_named_and_none_is_invented(
    example: dict[str, Any], repeated: list[str], fmt: dict[str, Any], donor: dict[str, Any]
) -> None:
    """Keys repeated at the end with a valid value (so the body validates), in compact, spaced and indented
    layouts: exactly the repeated keys are named, and a body without repeats always parses."""
    text = json.dumps(example, **fmt)
    extra = "".join(f", {json.dumps(k)}: {json.dumps(donor[k])}" for k in repeated)
    body = (text.rstrip()[:-1] + extra + "}").encode()
    if not repeated:
        assert (
            parse_body(body, schema.EncounterFeatures).model_dump()
            == parse_body(json.dumps(example).encode(), schema.EncounterFeatures).model_dump()
        )
        batch = json.dumps({"encounters": [example, donor]}, **fmt).encode()
        assert len(parse_body(batch, BatchRequest).encounters) == 2
        return
    with pytest.raises(InvalidBodyError) as caught:
        parse_body(body, schema.EncounterFeatures)
    assert caught.value.error == "duplicate_key"
    assert [e["field"] for e in caught.value.errors] == repeated


# --- every field's 422 message agrees with its error item, said once (issue #23) ---------------------------

ABSENT = object()  # a wrong "value": the field left out of the body
FIELDS: dict[str, schema.Column] = {
    c.name: c for c in (*schema.FEATURE_COLUMNS, *schema.HISTORY_COLUMNS, schema.column(schema.ENCOUNTER_ID))
}
DEATH = schema.DEATH_OR_HOSPICE_DISCHARGE_IDS
NULLABLE = {c.name for c in schema.FEATURE_COLUMNS if c.may_be_missing}
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1_000, 1_000),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["1", "3", "428", "V45", "250.83", "null", "None", "?", ""]),
    st.lists(st.integers(), max_size=2),
)


def _wrong_values(col: schema.Column) -> st.SearchStrategy[Any]:
    """Values of any JSON type, the field's own levels spelled differently, or the field left out."""
    near = [v.lower() for v in col.levels] + [f" {v}" for v in col.levels] + [f"{v}0" for v in col.levels]
    absent = [ABSENT] if col.name not in NULLABLE and col.name not in schema.HISTORY_FEATURE_NAMES else []
    return st.one_of(JSON_SCALARS, st.sampled_from(near or [""]), st.sampled_from(absent or [None]))


def _spoken(value: str | int) -> str:
    """How a message writes an allowed value: a JSON null, a number, a quoted level."""
    return "null" if value == "null" else str(value) if isinstance(value, int) else f"'{value}'"


def _listed(message: str) -> list[str]:
    """The values a message offers after its last "one of": quoted levels, numbers and null, in order."""
    _, found, clause = message.rpartition("one of ")
    return re.findall(r"'[^']*'|\bnull\b|-?\b\d+\b", clause) if found else []


def _error_for(col: schema.Column, value: Any) -> dict[str, Any] | None:
    """The error item naming ``col`` when an example encounter holds ``value`` there (None: it is valid)."""
    encounter = {k: v for k, v in EXAMPLES[0].items() if k != col.name}
    if value is not ABSENT:
        encounter[col.name] = value
    try:
        parse_body(json.dumps(encounter).encode(), schema.EncounterFeatures)
    except InvalidBodyError as exc:
        (item,) = [e for e in exc.errors if e["field"] == col.name]
        return item
    return None


def test_the_message_check_covers_every_field_of_the_contract() -> None:
    fields = {f.alias or name for name, f in schema.EncounterFeatures.model_fields.items()}
    assert set(FIELDS) == fields


@pytest.mark.parametrize("name", sorted(FIELDS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_wrong_value_is_told_what_its_field_allows_once(data: st.DataObject, name: str) -> None:
    """Before: the diag_* messages printed the ICD-9 pattern twice; race's message left out null, though its
    `allowed` listed it; discharge_disposition_id's message offered 11 (death), which `allowed` leaves out."""
    col = FIELDS[name]
    value = data.draw(_wrong_values(col), label="value")
    item = _error_for(col, value)
    assume(item is not None)
    assert item is not None
    message = item["message"]
    assert message.count(schema.DIAGNOSIS_PATTERN) == (1 if col.kind is schema.Kind.DIAGNOSIS else 0), message
    if "allowed" in item:
        assert _listed(message) == [_spoken(v) for v in item["allowed"]], message
    elif col.kind is schema.Kind.DIAGNOSIS:
        assert re.search(r"\bnull\b", message.rpartition(schema.DIAGNOSIS_PATTERN)[2]), message
    else:
        bounds = (1, schema.MAX_ENCOUNTER_ID) if col.name == schema.ENCOUNTER_ID else (col.minimum, col.maximum)
        assert (item["minimum"], item["maximum"]) == bounds
        assert message.count(f"from {bounds[0]} to {bounds[1]}") == 1, message
    if col.kind is schema.Kind.CODED:  # numbers; the death or hospice codes are answered not_eligible instead
        codes = [int(v) for v in col.levels]
        assert item["allowed"] == [c for c in codes if col.name != schema.ELIGIBILITY_FIELD or c not in DEATH]
    elif col.levels:
        assert item["allowed"] == [*col.levels, *(["null"] if col.may_be_missing else [])]


@pytest.fixture
def client_without_model(tmp_path: Path) -> Iterator[TestClient]:
    """An app whose registry is empty: a body is checked before any model is needed."""
    app = create_app(settings_for(f"sqlite:///{tmp_path / 'empty-mlflow.db'}", f"sqlite:///{tmp_path / 'log.db'}"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_issue_examples_name_the_pattern_once_and_null_for_race(client_without_model: TestClient) -> None:
    """The 422 of POST /predict for the issue's two values."""
    response = client_without_model.post("/predict", json={**EXAMPLES[0], "diag_1": "abc", "race": "Martian"})
    assert response.status_code == 422
    by_field = {e["field"]: e for e in response.json()["errors"]}
    assert by_field["diag_1"]["message"] == (
        "'abc' is not allowed: send an ICD-9 code like '428', '250.13', 'V45' or 'E888' (pattern "
        f"{schema.DIAGNOSIS_PATTERN}), or null when unknown"
    )
    assert by_field["race"]["message"] == (
        "'Martian' is not allowed: send one of 'AfricanAmerican', 'Asian', 'Caucasian', 'Hispanic', 'Other' or null"
    )
    assert by_field["race"]["allowed"] == ["AfricanAmerican", "Asian", "Caucasian", "Hispanic", "Other", "null"]
