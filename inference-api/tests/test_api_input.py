"""Ambiguous or mistyped JSON and encounters outside the model's population get a 422 that names the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient
from hypothesis import given, settings
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
