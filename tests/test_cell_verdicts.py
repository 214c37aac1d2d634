"""One verdict per cell: the per-value check (the page, the API's raw helpers) and the loader's vectorised
check agree on every string, and neither raises on any of them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from readmission import schema
from readmission.db import create_db_engine
from readmission.raw import SourceFile, load_raw_batches
from readmission.synthetic import synthetic_encounters
from readmission.validation import invalid_mask, row_problems

CHECKED = (*schema.COLUMNS, *schema.HISTORY_COLUMNS)

# Strings that look like numbers or levels but are not the source's way of writing them.
NEAR_MISSES = st.sampled_from(
    ["²", "٣", "١٢", "³4", "0", "00", "01", "+3", "-1", "3.0", "1e3", " 3", "3 ", "", "?", "??", "NaN", "None",
     "9" * 19, "9" * 18, " Caucasian", "caucasian", "V57", "v57", "250.83", "250.", "E8780"]
)  # fmt: skip
TEXTS = st.one_of(NEAR_MISSES, st.text(max_size=12), st.from_regex(r"[0-9]{1,4}", fullmatch=True))


@settings(max_examples=600, deadline=None)
@given(col=st.sampled_from(CHECKED), value=TEXTS)
def test_the_value_check_and_the_loaders_mask_agree_and_never_raise(col: schema.Column, value: str) -> None:
    reason = schema.check_value(col, value)
    assert bool(invalid_mask(col, pd.Series([value], dtype=object)).iloc[0]) is (reason is not None)
    if reason is not None:
        assert reason.startswith(f"{col.name}: ")


@pytest.mark.parametrize("value", ["²", "٣", "01", "+3", "3.0", ""])
def test_a_cell_that_is_not_a_plain_number_is_quarantined_not_a_crash(value: str, tmp_path: Path) -> None:
    """Before: '²' in num_lab_procedures stopped the loader with ValueError: invalid literal for int()."""
    frame = synthetic_encounters(10, seed=4)
    frame.loc[2, "num_lab_procedures"] = value
    path = tmp_path / "cells.csv"
    frame.to_csv(path, index=False)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'raw.db'}")
    report = load_raw_batches(engine, SourceFile.read(path))
    assert (report.rows_loaded, report.rows_quarantined) == (9, 1)
    with engine.connect() as conn:
        reason = conn.execute(text("SELECT reason FROM raw_quarantine")).scalar_one()
    assert reason == schema.check_value(schema.column("num_lab_procedures"), value)
    assert reason.startswith(f"num_lab_procedures: {value!r} is not a whole number") or value == ""


def test_row_problems_list_each_bad_cell_of_a_row_in_contract_order() -> None:
    frame = synthetic_encounters(3, seed=2).assign(prior_encounters=["", "2", "²"])
    frame.loc[1, "age"] = "[100-110)"
    frame.loc[1, "race"] = ""
    problems = row_problems(frame)
    assert list(problems) == [1, 2]
    assert problems[1] == [
        "race: no value; write ? when it is unknown",
        "age: unknown level '[100-110)' (allowed: " + ", ".join(schema.AGE_BRACKETS) + ")",
    ]
    assert problems[2] == ["prior_encounters: '²' is not a whole number (digits 0-9, no sign, no leading zero: e.g. 3)"]
