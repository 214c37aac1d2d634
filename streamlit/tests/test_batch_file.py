"""The page's batch check and the loader read a file the same way and judge every row the same way."""

from __future__ import annotations

import codecs
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from uisupport import eligible

from readmission import schema
from readmission.db import create_db_engine
from readmission.errors import SourceFormatError
from readmission.raw import SourceFile, load_raw_batches
from readmission.synthetic import synthetic_encounters
from readmission_ui.batch import BatchFileError, check_file

VALUES = st.one_of(
    st.sampled_from(["²", "٣", "01", "+3", "3.0", "", "?", " Caucasian", "V57", "250.83", "[100-110)", "Ch"]),
    st.text(alphabet=st.characters(exclude_characters=",;\t\r\n\"'", exclude_categories=["Cs"]), max_size=8),
)


def _loader_reasons(content: bytes) -> dict[int, str]:
    """line of the file (the header is line 1) -> quarantine reason, from a real load into SQLite."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(content)
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'raw.db'}")
        load_raw_batches(engine, SourceFile.read(path))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT source_line, reason FROM raw_quarantine")).all()
        engine.dispose()
    return {int(line): str(reason) for line, reason in rows}


@settings(max_examples=40, deadline=None)
@given(
    cells=st.lists(st.tuples(st.integers(0, 9), st.sampled_from(schema.FEATURE_NAMES), VALUES), min_size=1, max_size=4),
    delimiter=st.sampled_from([",", ";", "\t"]),
    bom=st.booleans(),
)
@example(cells=[(0, "race", "a\x00b")], delimiter=",", bom=False)  # a NUL byte: both refuse the whole file
@example(cells=[(0, "race", "\x00")], delimiter=",", bom=True)  # once read as a cell behind a UTF-8 mark
def test_the_page_and_the_loader_give_each_row_the_same_verdict(
    cells: list[tuple[int, str, str]], delimiter: str, bom: bool
) -> None:
    frame = eligible(synthetic_encounters(10, seed=5))
    for row, name, value in cells:
        frame.loc[row, name] = value
    content = (codecs.BOM_UTF8 if bom else b"") + frame.to_csv(index=False, sep=delimiter).encode()
    if b"\x00" in content.removeprefix(codecs.BOM_UTF8)[:4096]:  # not text (csvfile's rule): both refuse it
        with pytest.raises(BatchFileError, match=r"not a text file \(it holds NUL bytes\)"):
            check_file(content, max_rows=1_000)
        with pytest.raises(SourceFormatError, match=r"not a text file \(it holds NUL bytes\)"):
            _loader_reasons(content)
        return
    checked = check_file(content, max_rows=1_000)
    page: dict[int, list[str]] = {}
    for line, problem in checked.row_errors:
        if "is not eligible" not in problem:  # the page's own rule on top: RAW keeps such rows
            page.setdefault(line, []).append(problem)  # both count the file's lines, the header as line 1
    assert {line: "; ".join(problems) for line, problems in page.items()} == _loader_reasons(content)
    assert len(checked.encounters) == (10 if not checked.row_errors else 0)


def test_a_row_ending_in_death_or_hospice_is_listed_with_the_apis_reason() -> None:
    frame = synthetic_encounters(5, seed=6)
    frame.loc[:, "discharge_disposition_id"] = "1"
    frame.loc[3, "discharge_disposition_id"] = "11"
    checked = check_file(frame.to_csv(index=False).encode(), max_rows=1_000)
    assert checked.row_errors == [(5, schema.eligibility_problem(11))]
    assert "is not eligible: the encounter ended in death or hospice" in checked.row_errors[0][1]
    assert checked.encounters == []
    assert _loader_reasons(frame.to_csv(index=False).encode()) == {}  # RAW keeps it; CLEAN leaves it out
