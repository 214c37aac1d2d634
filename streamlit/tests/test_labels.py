"""The form's labels, derived from the contract: every level of every categorical column gets a readable,
non-empty label unique within its column, and each 0/1 field is a statement answered No or Yes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from readmission import schema
from readmission_ui.labels import UNKNOWN, YES_NO, factor_label, flag_label, is_flag, level_label

CATEGORICAL = [c for c in schema.COLUMNS if c.levels]  # categories, codes and the outcome
GLUED = re.compile(r"[a-z][A-Z][a-z]")  # 'AfricanAmerican', 'InternalMedicine': a code, not words


@st.composite
def two_levels(draw: st.DrawFn) -> tuple[schema.Column, str, str]:
    """A categorical column of the contract and two of its levels (possibly the same one)."""
    col = draw(st.sampled_from(CATEGORICAL))
    return col, draw(st.sampled_from(col.levels)), draw(st.sampled_from(col.levels))


@settings(max_examples=500, deadline=None)
@given(two_levels())
def test_every_level_gets_a_readable_label_unique_in_its_column(drawn: tuple[schema.Column, str, str]) -> None:
    col, level, other = drawn
    label = level_label(col, level)
    assert label.strip() == label and label, (col.name, level)
    assert GLUED.search(label) is None, f"{col.name}: {level!r} is shown as {label!r}"
    assert label != UNKNOWN, f"{col.name}: {level!r} would read like the missing choice"
    assert (label == level_label(col, other)) == (level == other), (col.name, level, other)


def test_each_labelled_column_labels_exactly_its_levels() -> None:
    for col in CATEGORICAL:
        assert not col.labels or set(col.labels) == set(col.levels), col.name


def test_the_codes_a_newcomer_met_read_as_words_and_codes_keep_their_number() -> None:
    assert level_label(schema.column("race"), "AfricanAmerican") == "African American"
    assert level_label(schema.column("medical_specialty"), "InternalMedicine") == "Internal Medicine"
    assert level_label(schema.column("payer_code"), "MC") == "Medicare (MC)"
    assert level_label(schema.column("payer_code"), "CP") == "CP (not explained by the source)"  # nothing guessed
    assert level_label(schema.column("admission_type_id"), 1) == "1: Emergency"
    assert level_label(schema.column("race"), UNKNOWN) == UNKNOWN


def test_the_0_1_fields_are_statements_answered_no_or_yes() -> None:
    flags = [h for h in schema.HISTORY_FEATURES if is_flag(h)]
    assert [h.name for h in flags] == ["previous_readmission", "previous_early_readmission"]
    assert [flag_label(h) for h in flags] == [
        "The patient's previous encounter was followed by any readmission",
        "The patient's previous encounter was followed by a readmission within 30 days",
    ]
    assert not [c.name for c in schema.FEATURE_COLUMNS if is_flag(c)]  # counts stay number inputs
    assert YES_NO[0] == "No" and YES_NO[1] == "Yes"  # by value: 0 is No


def test_field_labels_drop_a_legend_of_raw_codes_the_choices_no_longer_show() -> None:
    """Was: "HbA1c test result ('None' = not measured)" above choices reading "Not measured", "Over 8%"."""
    from readmission_ui.labels import field_label

    for name in ("A1Cresult", "max_glu_serum", "change"):
        assert "' = " not in field_label(schema.column(name)), field_label(schema.column(name))
    assert field_label(schema.column("A1Cresult")) == "HbA1c test result"
    assert field_label(schema.column("num_lab_procedures")) == schema.column("num_lab_procedures").description


def test_explanation_factors_are_worded_as_the_form_words_them() -> None:
    assert factor_label("number_inpatient", "Inpatient visits in the year before", 4) == (
        "Inpatient visits in the year before: 4"
    )
    assert factor_label("admission_type_id", "Type of admission", 1) == "Type of admission: 1: Emergency"
    assert factor_label("previous_early_readmission", "1 if ...", 1) == (
        "The patient's previous encounter was followed by a readmission within 30 days: Yes"
    )
    assert factor_label("race", "Race", "AfricanAmerican") == "Race: African American"
    assert factor_label("payer_code", "Payer (insurance) code", None) == "Payer (insurance) code: Unknown"
    assert factor_label("visits_last_year", "Outpatient + emergency + inpatient visits", 7) == (
        "Outpatient + emergency + inpatient visits: 7"
    )
