"""Vectorised checks of raw rows against the feature contract: the loader's and the page's one verdict."""

from __future__ import annotations

import pandas as pd

from readmission.errors import SourceFormatError
from readmission.schema import (
    COLUMN_NAMES,
    COLUMNS,
    DEATH_OR_HOSPICE_DISCHARGE_IDS,
    DIAGNOSIS_PATTERN,
    ELIGIBILITY_FIELD,
    HISTORY_COLUMNS,
    IDENTIFIER_PATTERN,
    MISSING,
    WHOLE_NUMBER_PATTERN,
    Column,
    Kind,
    check_value,
    eligibility_problem,
)


def check_header(columns: list[str], source: str) -> None:
    """Fail with the missing/unexpected column names unless ``columns`` is the contract's set."""
    missing = [c for c in COLUMN_NAMES if c not in columns]
    extra = [c for c in columns if c not in COLUMN_NAMES]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected columns: {', '.join(repr(c) if not c.isprintable() else c for c in extra)}")
        raise SourceFormatError(
            f"{source} is not the UCI diabetic_data.csv layout ({'; '.join(parts)}). "
            "Point DATA_PATH / --data-path at the original diabetic_data.csv or the UCI zip."
        )


def _allowed_texts(col: Column) -> tuple[str, ...] | None:
    """Every allowed text of a bounded column (membership is much faster than parsing numbers)."""
    if col.kind in (Kind.CATEGORY, Kind.CODED, Kind.TARGET):
        return col.levels
    if col.kind is Kind.INTEGER and col.minimum is not None and col.maximum is not None:
        return tuple(str(n) for n in range(col.minimum, col.maximum + 1))
    return None


def invalid_mask(col: Column, values: pd.Series) -> pd.Series:
    """True where the text in ``values`` breaks the contract for ``col``.

    The vectorised twin of :func:`readmission.schema.check_value`: the same verdict on every string.
    """
    allowed = _allowed_texts(col)
    if allowed is not None:
        ok = values.isin(allowed)
    elif col.kind is Kind.DIAGNOSIS:
        ok = values.str.fullmatch(DIAGNOSIS_PATTERN)
    elif col.kind is Kind.IDENTIFIER:
        ok = values.str.fullmatch(IDENTIFIER_PATTERN)
    else:  # an integer without bounds (the contract has none today)
        ok = values.str.fullmatch(WHOLE_NUMBER_PATTERN)
    ok = ok.fillna(False).astype(bool)
    if col.may_be_missing:
        ok |= values.eq(MISSING)
    return ~ok


def row_problems(frame: pd.DataFrame) -> dict[int, list[str]]:
    """The problems of each row that breaks the contract (rows without problems are absent).

    ``frame`` holds the raw text of its columns (as :func:`readmission.csvfile.parse_records` gives it);
    every contract column present is checked, and the history features where given (empty there means a
    first visit). Problems are listed in the contract's column order, each naming column, value and reason.
    """
    problems: dict[int, list[str]] = {}
    checks = [(c, False) for c in COLUMNS if c.name in frame] + [(h, True) for h in HISTORY_COLUMNS if h.name in frame]
    for col, optional in checks:
        values = frame[col.name]
        bad = invalid_mask(col, values)
        if optional:
            bad &= values.ne("")
        for idx in bad[bad].index:
            reason = check_value(col, str(values.at[idx])) or f"{col.name}: invalid value {values.at[idx]!r}"
            problems.setdefault(int(idx), []).append(reason)
    return problems


def contract_violations(frame: pd.DataFrame) -> pd.Series:
    """Per row, the reasons it breaks the contract joined by '; ' ('' when it is valid)."""
    reasons = pd.Series("", index=frame.index, dtype=object)
    for idx, problems in row_problems(frame).items():
        reasons.at[idx] = "; ".join(problems)
    return reasons


def eligibility_problems(frame: pd.DataFrame) -> dict[int, list[str]]:
    """The rows outside the model's population (death or hospice), with the reason
    (:func:`readmission.schema.eligibility_problem`); the API answers such an encounter 422 ``not_eligible``."""
    if ELIGIBILITY_FIELD not in frame:
        return {}
    values = frame[ELIGIBILITY_FIELD]
    out = values.isin([str(code) for code in DEATH_OR_HOSPICE_DISCHARGE_IDS])
    return {int(i): [str(eligibility_problem(values.at[i]))] for i in out[out].index}


def repeated_ids(frame: pd.DataFrame, scope: str) -> dict[int, list[str]]:
    """The rows whose ``encounter_id`` an earlier row of ``frame`` already holds (``scope`` names what the
    frame is in the message: "batch" for the loader, "file" for the page). ``frame`` holds rows that passed
    the contract, so ids are canonical digits and equal text means equal number."""
    if "encounter_id" not in frame:
        return {}
    ids = frame["encounter_id"]
    repeated = ids.duplicated()
    return {int(i): [f"encounter_id {ids.at[i]} appears earlier in the same {scope}"] for i in ids.index[repeated]}
