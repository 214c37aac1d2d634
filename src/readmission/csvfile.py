"""The one reader of encounter files: the loader (``readmission load-raw``) and the page's batch scoring both
turn a file's bytes into records here, so they accept and refuse the same files.

Accepted: UTF-8 with or without a byte-order mark (UTF-16 with its mark is re-encoded; a file that is not
UTF-8, as Excel's Windows-1252 exports, is read as Windows-1252, else Latin-1, so its odd cells are
refused by the contract, never a crash), any line ending (LF, CRLF, CR), fields separated by ``,``, ``;``
or tab, fields quoted with ``"`` as RFC 4180 describes. The separator is found by the standard library's
``csv.Sniffer`` on the header line (whose names the contract knows), then on the first lines, never by
hand. Anything else is refused with one message that says what was found and what to do.

Every accepted file comes out in one canonical form: comma-separated UTF-8 records, one ``bytes`` each
(no line terminator), so everything downstream (the field-count check, the parser, PostgreSQL ``COPY``)
sees one dialect. A plain comma-separated file without quotes is used as it is, without re-encoding.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass

import pandas as pd

from readmission.errors import SourceFormatError

ACCEPTED_DELIMITERS = {",": "commas", ";": "semicolons", "\t": "tabs"}
_CANDIDATES = ",;\t|:^~"  # what the sniffer may report; only ACCEPTED_DELIMITERS are read
_NAMES = {**ACCEPTED_DELIMITERS, "|": "'|'", ":": "':'", "^": "'^'", "~": "'~'"}
_SNIFF_LINES = 20
_SNIFF_BYTES = 8_192  # the contract's header is about 1 KB
SOURCE_FIX = "Save it as CSV (comma-, semicolon- or tab-separated, UTF-8) with the header of diabetic_data.csv."


@dataclass(frozen=True)
class CsvRecords:
    """A file's header and data records in the canonical dialect.

    ``lines[i]`` is record ``i`` as comma-separated UTF-8 bytes; ``line_numbers[i]`` is the 1-based line of
    the file where it starts (blank lines are skipped, so they are not always consecutive).
    """

    header: list[str]
    header_line: bytes
    lines: list[bytes]
    line_numbers: list[int]
    delimiter: str


def read_records(data: bytes, source: str) -> CsvRecords:
    """The header and records of the CSV file ``data``; ``source`` names it in errors.

    Raises SourceFormatError when the file is empty, is not text, or is separated by something other than
    commas, semicolons or tabs (the message names the separator found).
    """
    data = _as_utf8(data, source)
    numbered = [(n, line) for n, line in enumerate(data.splitlines(), start=1) if line.strip()]
    if not numbered:
        raise SourceFormatError(f"{source} is empty. {SOURCE_FIX}")
    delimiter = _delimiter([line for _, line in numbered[:_SNIFF_LINES]], source)
    if delimiter == "," and b'"' not in data and _is_utf8(data):  # the common case: already canonical
        header = numbered[0][1].decode("utf-8", "replace").split(",")
        body = numbered[1:]
        records = CsvRecords(_clean(header), numbered[0][1], [b for _, b in body], [n for n, _ in body], ",")
    else:
        records = _transcode(numbered, delimiter)
    repeated = sorted({name for name in records.header if records.header.count(name) > 1})
    if repeated:
        raise SourceFormatError(f"{source} names the column(s) {', '.join(repeated)} more than once. {SOURCE_FIX}")
    return records


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text(data: bytes) -> str:
    """``data`` as text: UTF-8, else Windows-1252 (Excel's usual export), else Latin-1 (never fails)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _as_utf8(data: bytes, source: str) -> bytes:
    """``data`` without a UTF-8 byte-order mark, UTF-16 (with its mark) re-encoded as UTF-8.

    Raises SourceFormatError when the first 4 KiB of that UTF-8 (of a UTF-16 file, up to about 8 KiB of the
    file) hold a NUL byte (a binary file, a spreadsheet saved as .xlsx), whatever mark the file starts with."""
    utf8 = _without_mark(data, source)
    if b"\x00" in utf8[:4096]:
        raise SourceFormatError(f"{source} is not a text file (it holds NUL bytes). {SOURCE_FIX}")
    return utf8


def _without_mark(data: bytes, source: str) -> bytes:
    """``data`` without its UTF-8 byte-order mark, or decoded from UTF-16 (by its mark) and encoded as UTF-8;
    unmarked data as it is. Raises SourceFormatError for UTF-32 (its little-endian mark starts with UTF-16's)
    and when a UTF-16 mark starts bytes that are not UTF-16."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise SourceFormatError(f"{source} is UTF-32 text. {SOURCE_FIX}")
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise SourceFormatError(
                f"{source} starts with a UTF-16 mark but is not UTF-16 text. {SOURCE_FIX}"
            ) from None
    return data


def _delimiter(first_lines: list[bytes], source: str) -> str:
    """The separator of the file, from its header line, else from its first complete lines (a malformed
    record among them must not decide the file's dialect)."""
    found = ""
    for sample in (first_lines[:1], first_lines):
        try:  # each line cut to _SNIFF_BYTES: the sniffer's time grows with the square of a line's length
            text = _text(b"\n".join(line[:_SNIFF_BYTES] for line in sample))
            found = csv.Sniffer().sniff(text, delimiters=_CANDIDATES).delimiter
            break
        except csv.Error:
            continue
    if not found:
        if len(first_lines[0].split(b",")) > 1 or not any(c.encode() in first_lines[0] for c in _CANDIDATES):
            return ","  # a header-only or single-column file: let the header check name what is missing
        raise SourceFormatError(f"{source}: cannot tell how its fields are separated. {SOURCE_FIX}") from None
    if found not in ACCEPTED_DELIMITERS:
        raise SourceFormatError(f"{source} is separated by {_NAMES.get(found, repr(found))}. {SOURCE_FIX}")
    return found


def _transcode(numbered: list[tuple[int, bytes]], delimiter: str) -> CsvRecords:
    """Re-encode the lines of a file with quotes, another separator or another encoding as canonical
    records. Each physical line is one record: a quote left open cannot swallow the lines after it (a field
    holding a line break is not a value of the contract), and such a line is kept as it is, so that
    ``parse_records`` names it."""
    lines: list[bytes] = []
    for _, raw in numbered:
        text = _text(raw)
        if text.count('"') % 2:
            lines.append(text.encode("utf-8"))  # unbalanced quotes: named by parse_records
        else:
            lines.append(_canonical(next(csv.reader([text], delimiter=delimiter))))
    header = next(csv.reader([_text(numbered[0][1])], delimiter=delimiter))
    return CsvRecords(_clean(header), lines[0], lines[1:], [n for n, _ in numbered[1:]], delimiter)


def _canonical(fields: list[str]) -> bytes:
    """One record as comma-separated UTF-8, quoted only where a field needs it (RFC 4180): a field holding a
    separator, a quote or a line break (the writer quotes line breaks found in its line terminator)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    return out.getvalue()[:-2].encode("utf-8")


def _clean(header: list[str]) -> list[str]:
    """Column names without surrounding spaces (spreadsheets pad them)."""
    return [name.strip() for name in header]


def parse_records(header: list[str], lines: list[bytes]) -> tuple[pd.DataFrame, dict[int, str]]:
    """The text of every well-formed record of ``lines`` (canonical records, as :func:`read_records` gives
    them), and why the others cannot be read.

    The frame's index is the position in ``lines`` and its columns are ``header``; every cell is the
    field's exact text (no type inference, no NA values). A record whose field count differs from the
    header's is left out with its reason.
    """
    expected = len(header)
    good: list[int] = []
    bad: dict[int, str] = {}
    for i, line in enumerate(lines):
        count = line.count(b",") + 1
        if b'"' in line:
            if line.count(b'"') % 2:
                bad[i] = 'a quote (") opens a field that does not close on its line'
                continue
            count = len(next(csv.reader([line.decode("utf-8", "replace")])))
        if count == expected:
            good.append(i)
        else:
            bad[i] = f"record has {count} fields, expected {expected}"
    if not good:  # no record to parse (a header alone, or every record malformed): pandas would raise
        return pd.DataFrame({name: pd.Series(dtype=str) for name in header}), bad
    payload = b"\n".join([_canonical(header), *(lines[i] for i in good)])
    frame = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=False, na_values=[], engine="pyarrow")
    if len(frame) != len(good):
        raise SourceFormatError(f"could not parse the records: {len(good)} well-formed but {len(frame)} rows read")
    frame.index = pd.Index(good)
    return frame, bad
