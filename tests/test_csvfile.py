"""The one reader of encounter files: dialects accepted by the loader and the page alike, the rest refused
with one message that names what was found."""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from readmission.csvfile import parse_records, read_records
from readmission.db import create_db_engine
from readmission.errors import SourceFormatError
from readmission.raw import SourceFile, load_raw_batches
from readmission.synthetic import synthetic_encounters

FRAME = synthetic_encounters(60, seed=11)


def _write(
    frame: pd.DataFrame,
    *,
    delimiter: str = ",",
    newline: str = "\n",
    quoting: int = csv.QUOTE_MINIMAL,
    bom: bytes = b"",
    encoding: str = "utf-8",
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    writer.writerow(frame.columns)
    writer.writerows(frame.itertuples(index=False, name=None))
    return bom + out.getvalue().encode(encoding)


def _frame(data: bytes) -> pd.DataFrame:
    records = read_records(data, "f.csv")
    frame, bad = parse_records(records.header, records.lines)
    assert bad == {}
    return frame.reset_index(drop=True)


CANONICAL = _frame(_write(FRAME))


@pytest.mark.parametrize(
    "variant",
    [
        {"bom": codecs.BOM_UTF8},
        {"delimiter": ";"},
        {"delimiter": "\t"},
        {"newline": "\r\n"},
        {"newline": "\r"},
        {"quoting": csv.QUOTE_ALL},
        {"bom": codecs.BOM_UTF16_LE, "encoding": "utf-16-le", "delimiter": "\t"},  # Excel's "Unicode text"
    ],
    ids=["utf8-bom", "semicolon", "tab", "crlf", "cr", "all-quoted", "utf16-tab"],
)
def test_every_accepted_dialect_reads_as_the_plain_file(variant: dict[str, object], tmp_path: Path) -> None:
    data = _write(FRAME, **variant)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(_frame(data), CANONICAL)
    path = tmp_path / "variant.csv"
    path.write_bytes(data)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'raw.db'}")
    report = load_raw_batches(engine, SourceFile.read(path, batch_size=25))
    assert (report.rows_loaded, report.rows_quarantined) == (60, 0)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT race, diag_1 FROM raw_encounters ORDER BY encounter_id")).all()
    expected = FRAME.assign(key=FRAME["encounter_id"].astype(int)).sort_values("key")
    assert [tuple(r) for r in stored] == list(zip(expected["race"], expected["diag_1"], strict=True))


def test_the_same_rows_in_another_dialect_are_the_same_batches(tmp_path: Path) -> None:
    """The ledger's checksums are of the canonical records: a re-export (BOM, ';', CRLF) is not a new file."""
    plain, other = tmp_path / "plain.csv", tmp_path / "other.csv"
    plain.write_bytes(_write(FRAME))
    other.write_bytes(_write(FRAME, delimiter=";", newline="\r\n", bom=codecs.BOM_UTF8))
    engine = create_db_engine(f"sqlite:///{tmp_path / 'raw.db'}")
    load_raw_batches(engine, SourceFile.read(plain, batch_size=25))
    again = load_raw_batches(engine, SourceFile.read(other, batch_size=25))
    assert (again.batches_already_loaded, again.rows_loaded) == (3, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_write(FRAME, delimiter="|"), "f.csv is separated by '|'. Save it as CSV (comma-, semicolon- or tab-"),
        (b"", "f.csv is empty"),
        (b"\n \n\r\n", "f.csv is empty"),
        (b"PK\x03\x04\x00\x00binary", "f.csv is not a text file"),
        (b"a,b,a\n1,2,3\n", "f.csv names the column(s) a more than once"),
        (_write(FRAME, encoding="utf-32"), "f.csv is UTF-32 text. Save it as CSV"),  # was: 'not a text file'
        (codecs.BOM_UTF32_BE + "a,b\n".encode("utf-32-be"), "f.csv is UTF-32 text. Save it as CSV"),
    ],
    ids=["pipe", "empty", "blank-lines", "binary", "repeated-column", "utf-32-le", "utf-32-be"],
)
def test_other_files_are_refused_with_what_was_found_and_the_fix(data: bytes, message: str) -> None:
    with pytest.raises(SourceFormatError) as caught:
        read_records(data, "f.csv")
    assert str(caught.value).startswith(message)


def test_a_bom_file_loads_where_it_once_failed_with_an_invisible_column_name(tmp_path: Path) -> None:
    """Before: 'missing columns: encounter_id; unexpected columns: \\ufeffencounter_id'."""
    path = tmp_path / "bom.csv"
    path.write_bytes(_write(FRAME, bom=codecs.BOM_UTF8))
    assert SourceFile.read(path).header[0] == "encounter_id"


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (b"", "utf-8"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ],
    ids=["no-mark", "utf-8-mark", "utf-16-le", "utf-16-be"],
)
def test_a_nul_in_the_first_4_kib_is_refused_whatever_mark_the_file_starts_with(bom: bytes, encoding: str) -> None:
    """Before: behind a UTF-8 mark a NUL was read as a cell ("race: unknown level '\\x00'"), without one the
    file was refused; the page and the loader (both this reader) followed the mark."""
    frame = FRAME.head(3).copy()
    frame.loc[0, "race"] = "\x00"
    with pytest.raises(SourceFormatError, match=r"^f\.csv is not a text file \(it holds NUL bytes\)"):
        read_records(_write(frame, bom=bom, encoding=encoding), "f.csv")
    assert read_records(_write(FRAME.head(3), bom=bom, encoding=encoding), "f.csv").header[0] == "encounter_id"


OPEN_QUOTE = 'a quote (") opens a field that does not close on its line'


def test_quoted_fields_keep_separators_and_a_field_over_two_lines_is_named_line_by_line() -> None:
    frame = FRAME.head(3).copy()
    frame.loc[0, "medical_specialty"] = "Surgery;General"  # a separator inside quotes: kept in the field
    frame.loc[1, "medical_specialty"] = "Surgery,\nGeneral"  # not a level, and it spans two lines
    records = read_records(_write(frame, delimiter=";"), "f.csv")
    parsed, bad = parse_records(records.header, records.lines)
    assert bad == {1: OPEN_QUOTE, 2: OPEN_QUOTE}  # each line of the broken record, by itself
    assert list(parsed.index) == [0, 3] and parsed.at[0, "medical_specialty"] == "Surgery;General"
    assert records.line_numbers == [2, 3, 4, 5]  # the file's own lines


def test_a_stray_quote_spoils_its_own_line_only() -> None:
    """Before: one cell written '"Surgery' swallowed every later line (a 1,500-row file raised
    '_csv.Error: field larger than field limit'; in 50 rows, 47 vanished without a reason)."""
    lines = _write(FRAME, delimiter=";").decode().splitlines()
    lines[5] = lines[5].replace(";", ';"', 1)
    records = read_records(("\n".join(lines) + "\n").encode(), "f.csv")
    parsed, bad = parse_records(records.header, records.lines)
    assert bad == {4: OPEN_QUOTE} and len(parsed) == len(FRAME) - 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    delimiter=st.sampled_from([",", ";", "\t"]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    bom=st.sampled_from([b"", codecs.BOM_UTF8]),
    rows=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=10_000),
    blank_lines=st.booleans(),
)
def test_any_accepted_dialect_gives_the_canonical_records(
    delimiter: str, newline: str, quoting: int, bom: bytes, rows: int, seed: int, blank_lines: bool
) -> None:
    frame = synthetic_encounters(rows, seed=seed)
    data = _write(frame, delimiter=delimiter, newline=newline, quoting=quoting, bom=bom)
    if blank_lines:
        data += newline.encode() * 3
    expected = _frame(_write(frame))
    pd.testing.assert_frame_equal(_frame(data), expected)
    assert read_records(data, "f.csv").lines == read_records(_write(frame), "f.csv").lines


@settings(max_examples=40, deadline=None)
@given(separator=st.sampled_from(["|", ":", "^", "~"]), rows=st.integers(min_value=0, max_value=10))
def test_any_other_separator_is_named(separator: str, rows: int) -> None:
    data = _write(synthetic_encounters(max(rows, 1), seed=rows).head(rows), delimiter=separator)
    with pytest.raises(SourceFormatError, match=re.escape(f"is separated by '{separator}'")):
        read_records(data, "f.csv")


@pytest.mark.parametrize("value", ["Surgery\nGeneral", "Surgery\rGeneral", "Surgery\r\nGeneral"])
def test_a_line_break_inside_a_quoted_field_is_one_bad_record_not_a_crash(value: str) -> None:
    """Before: a comma file with a quoted 'Surgery<newline>General' stopped loader and page with pandas'
    ParserError (the field lost its quotes on the way to the parser)."""
    frame = FRAME.head(4).copy()
    frame.loc[2, "medical_specialty"] = value
    records = read_records(_write(frame, newline="\r\n"), "f.csv")  # the writer quotes both line breaks
    parsed, bad = parse_records(records.header, records.lines)
    assert bad == {2: OPEN_QUOTE, 3: OPEN_QUOTE} and list(parsed.index) == [0, 1, 4]


def test_a_windows_1252_export_is_read_and_its_odd_cell_named() -> None:
    """Before: 'Cardiología' in a Windows-1252 file stopped both with 'invalid UTF8 data'."""
    frame = FRAME.head(4).copy()
    frame.loc[1, "medical_specialty"] = "Cardiología"
    records = read_records(_write(frame, encoding="cp1252"), "f.csv")
    parsed, bad = parse_records(records.header, records.lines)
    assert bad == {} and parsed.at[1, "medical_specialty"] == "Cardiología"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_a_malformed_record_among_the_first_lines_does_not_decide_the_dialect(delimiter: str) -> None:
    """Before: one record with an extra field in the first 20 lines of a ';' file refused the whole file
    ('cannot tell how its fields are separated'); only that record is bad."""
    lines = _write(FRAME.head(10), delimiter=delimiter).decode().splitlines()
    lines[3] += f"{delimiter}extra"
    records = read_records(("\n".join(lines) + "\n").encode(), "f.csv")
    parsed, bad = parse_records(records.header, records.lines)
    assert bad == {2: "record has 51 fields, expected 50"} and len(parsed) == 9


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(max_size=12),
    column=st.sampled_from(["race", "medical_specialty", "num_lab_procedures", "diag_1"]),
    delimiter=st.sampled_from([",", ";", "\t"]),
    encoding=st.sampled_from(["utf-8", "cp1252"]),
)
def test_any_cell_text_in_any_dialect_is_read_back_or_named_never_a_crash(
    value: str, column: str, delimiter: str, encoding: str
) -> None:
    """A cell holding any text, written by a CSV writer that quotes what needs quoting, is read back as that
    text, or its record alone is named (a line break inside it); no text stops the reader or the parser."""
    frame = FRAME.head(3).copy()
    frame.loc[1, column] = value
    try:
        data = _write(frame, delimiter=delimiter, newline="\r\n", encoding=encoding)
    except UnicodeEncodeError:
        encoding = "utf-8"  # not representable in Windows-1252: the file is UTF-8
        data = _write(frame, delimiter=delimiter, newline="\r\n")
    if "\x00" in value:
        with pytest.raises(SourceFormatError, match="is not a text file"):
            read_records(data, "f.csv")
        return
    records = read_records(data, "f.csv")
    parsed, bad = parse_records(records.header, records.lines)
    if "\r" in value or "\n" in value:  # the row's lines are named; the rows around it read back
        assert 1 in bad and list(parsed.index) == [0, len(records.lines) - 1]
    else:
        assert bad == {}
        if encoding == "utf-8":
            assert parsed.at[1, column] == value
