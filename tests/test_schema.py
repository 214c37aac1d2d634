"""The feature contract against the real file, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from readmission import schema
from readmission.synthetic import synthetic_encounters
from readmission.validation import contract_violations


@pytest.fixture(scope="module")
def real_frame(real_data_path: Path) -> pd.DataFrame:
    return pd.read_csv(real_data_path, dtype=str, keep_default_na=False)


def test_contract_declares_exactly_the_files_columns(real_frame: pd.DataFrame) -> None:
    assert list(real_frame.columns) == list(schema.COLUMN_NAMES)
    assert len(real_frame) == 101_766


def test_every_value_in_the_real_file_is_allowed(real_frame: pd.DataFrame) -> None:
    violations = contract_violations(real_frame)
    assert violations[violations != ""].to_dict() == {}


def test_every_declared_level_of_a_categorical_feature_is_used_in_the_real_file_or_is_a_known_level(
    real_frame: pd.DataFrame,
) -> None:
    # The contract may list levels the file lacks (e.g. 'Up' for a drug nobody's dose went up), but no
    # category list may be invented: every unused level must be a medication dose or a documented code.
    for col in schema.COLUMNS:
        if col.kind is not schema.Kind.CATEGORY:
            continue
        unused = set(col.levels) - set(real_frame[col.name])
        if unused:
            assert col.section is schema.Section.MEDICATIONS and unused <= set(schema.MEDICATION_LEVELS), col.name


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "race",
            "Martian",
            "race: unknown level 'Martian' (allowed: AfricanAmerican, Asian, Caucasian, Hispanic, Other, or ? when unknown)",
        ),
        ("gender", "?", "gender: missing value '?' is not allowed"),
        ("age", "[100-110)", "age: unknown level '[100-110)'"),
        ("A1Cresult", ">9", "A1Cresult: unknown level '>9' (allowed: None, Norm, >7, >8)"),
        ("time_in_hospital", "15", "time_in_hospital: 15 is above the maximum 14"),
        ("time_in_hospital", "0", "time_in_hospital: 0 is below the minimum 1"),
        ("num_medications", "1.5", "num_medications: '1.5' is not a whole number"),
        ("discharge_disposition_id", "31", "discharge_disposition_id: unknown code '31'"),
        ("diag_1", "ABC", "diag_1: 'ABC' is not an ICD-9 code"),
        ("readmitted", "YES", "readmitted: unknown level 'YES' (allowed: NO, >30, <30)"),
    ],
)
def test_unknown_values_are_rejected_naming_column_and_value(name: str, value: str, message: str) -> None:
    reason = schema.check_value(schema.column(name), value)
    assert reason is not None
    assert reason.startswith(message)
    frame = synthetic_encounters(3, seed=1)
    frame.loc[1, name] = value
    found = contract_violations(frame)
    assert found.tolist()[0] == found.tolist()[2] == ""
    assert found.tolist()[1].startswith(message)


def test_unknown_column_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown column 'races'; the contract declares: encounter_id"):
        schema.column("races")


def test_encounter_model_accepts_real_rows_and_rejects_bad_values(real_frame: pd.DataFrame) -> None:
    sample = real_frame.sample(500, random_state=0)
    for record in sample.to_dict(orient="records"):
        values = {c.name: None if record[c.name] == schema.MISSING else record[c.name] for c in schema.FEATURE_COLUMNS}
        for c in schema.FEATURE_COLUMNS:
            if c.is_integer and values[c.name] is not None:
                values[c.name] = int(values[c.name])
        encounter = schema.EncounterFeatures.model_validate(values)
        assert schema.encounter_to_raw(encounter.model_dump()) == {
            c.name: record[c.name] for c in schema.FEATURE_COLUMNS
        }
    bad = {**values, "race": "Martian", "time_in_hospital": 99}
    with pytest.raises(ValidationError) as info:
        schema.EncounterFeatures.model_validate(bad)
    errors = {e["loc"][0]: e for e in info.value.errors()}
    assert set(errors) == {"race", "time_in_hospital"}
    assert "'AfricanAmerican'" in errors["race"]["msg"]
    assert errors["time_in_hospital"]["msg"] == "Input should be less than or equal to 14"


def test_raw_rows_round_trip_through_the_request_model(real_frame: pd.DataFrame) -> None:
    """``raw_to_encounter`` (the UI's upload, the load test's payloads) is the inverse of ``encounter_to_raw``."""
    for record in real_frame.sample(500, random_state=1).to_dict(orient="records"):
        assert schema.raw_violations(record) == []
        encounter = schema.EncounterFeatures.model_validate(schema.raw_to_encounter(record))
        assert schema.encounter_to_raw(encounter.model_dump()) == {
            c.name: record[c.name] for c in schema.FEATURE_COLUMNS
        }
        assert all(encounter.model_dump()[h] == 0 for h in schema.HISTORY_FEATURE_NAMES)  # absent: a first visit
    bad = {**record, "age": "[100-110)", "num_medications": "many", "prior_encounters": "-1"}
    del bad["race"]
    assert schema.raw_violations(bad) == [
        "race: no value; write ? when it is unknown",
        "age: unknown level '[100-110)' (allowed: " + ", ".join(schema.AGE_BRACKETS) + ")",
        "num_medications: 'many' is not a whole number (digits 0-9, no sign, no leading zero: e.g. 3)",
        "prior_encounters: '-1' is not a whole number (digits 0-9, no sign, no leading zero: e.g. 3)",
    ]


def test_encounter_model_forbids_unknown_fields_and_takes_hyphenated_names() -> None:
    base = {
        c.name: (c.minimum if c.kind is schema.Kind.INTEGER else (int(c.levels[0]) if c.is_integer else c.levels[0]))
        for c in schema.FEATURE_COLUMNS
        if c.kind is not schema.Kind.DIAGNOSIS
    }
    base["diag_1"] = "250.83"
    encounter = schema.EncounterFeatures.model_validate(base)
    assert encounter.model_dump()["glyburide-metformin"] == "No"
    assert encounter.model_dump()[schema.PRIOR_ENCOUNTERS] == 0
    # The caller's encounter_id is accepted (#22: stored with the prediction, never an input); patient_nbr is not.
    assert schema.EncounterFeatures.model_validate({**base, "encounter_id": 5}).model_dump()["encounter_id"] == 5
    with pytest.raises(ValidationError, match="encounter_id"):
        schema.EncounterFeatures.model_validate({**base, "encounter_id": 0})
    with pytest.raises(ValidationError, match="patient_nbr"):
        schema.EncounterFeatures.model_validate({**base, "patient_nbr": 5})


def test_example_encounters_pass_the_request_model_and_cover_every_input() -> None:
    assert len(schema.EXAMPLE_ENCOUNTERS) >= 3
    for name, example in schema.EXAMPLE_ENCOUNTERS.items():
        assert tuple(example) == schema.MODEL_INPUT_NAMES, name
        dumped = schema.EncounterFeatures.model_validate(example).model_dump(exclude={schema.ENCOUNTER_ID})
        assert dumped == example, name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_in_hospital", "3"),  # a count given as text
        ("time_in_hospital", 3.5),  # not a whole number (3.0 is one, as in JSON Schema)
        ("time_in_hospital", True),
        ("admission_type_id", True),  # JSON true is not code 1
        ("admission_type_id", "1"),
        ("previous_readmission", False),
        ("race", 1),
    ],
)
def test_encounter_model_takes_each_type_exactly_as_the_schema_states_it(field: str, value: object) -> None:
    example = schema.EncounterFeatures.model_validate_json(json.dumps(next(iter(schema.EXAMPLE_ENCOUNTERS.values()))))
    payload = {**example.model_dump(), field: value}
    with pytest.raises(ValidationError) as info:
        schema.EncounterFeatures.model_validate_json(json.dumps(payload))
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_whole_numbers_written_as_floats_are_integers_as_in_json_schema() -> None:
    example = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
    payload = {**example, "time_in_hospital": 3.0, "admission_type_id": 2.0}
    encounter = schema.EncounterFeatures.model_validate_json(json.dumps(payload)).model_dump()
    assert (encounter["time_in_hospital"], encounter["admission_type_id"]) == (3, 2)
    assert type(encounter["time_in_hospital"]) is int and type(encounter["admission_type_id"]) is int


@pytest.mark.parametrize(
    "col",
    [c for c in schema.COLUMNS if c.may_be_missing and not c.is_integer],
    ids=lambda c: c.name,
)
def test_a_wrong_value_is_told_that_question_mark_means_unknown(col: schema.Column) -> None:
    """Was: `race: unknown level 'Martian' (allowed: ...)` left out `?`, which the column accepts."""
    message = schema.check_value(col, "\u00a7wrong")
    assert message is not None and message.endswith(", or ? when unknown)"), message
