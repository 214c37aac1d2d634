"""Vectorised checks of raw rows against the feature contract."""

from __future__ import annotations

import pandas as pd

from readmission.errors import SourceFormatError
from readmission.schema import COLUMN_NAMES, COLUMNS, DIAGNOSIS_PATTERN, MISSING, Column, Kind, check_value


def check_header(columns: list[str], source: str) -> None:
    """Fail with the missing/unexpected column names unless ``columns`` is the contract's set."""
    missing = [c for c in COLUMN_NAMES if c not in columns]
    extra = [c for c in columns if c not in COLUMN_NAMES]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected columns: {', '.join(extra)}")
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


def _invalid_mask(col: Column, values: pd.Series) -> pd.Series:
    allowed = _allowed_texts(col)
    if allowed is not None:
        ok = values.isin(allowed)
    elif col.kind is Kind.DIAGNOSIS:
        ok = values.str.fullmatch(DIAGNOSIS_PATTERN).fillna(False).astype(bool)
    else:  # identifiers: positive whole numbers without leading zeros, within 64 bits
        ok = values.str.fullmatch(r"[1-9][0-9]{0,17}").fillna(False).astype(bool)
    if col.may_be_missing:
        ok |= values.eq(MISSING)
    return ~ok


def contract_violations(frame: pd.DataFrame) -> pd.Series:
    """Per row, the reasons it breaks the contract ('' when it is valid).

    ``frame`` holds the raw text of every column (as read with ``dtype=str``).
    """
    reasons = pd.Series("", index=frame.index, dtype=object)
    for col in COLUMNS:
        values = frame[col.name]
        bad = _invalid_mask(col, values)
        if not bad.any():
            continue
        for idx in bad[bad].index:
            reason = check_value(col, str(values.at[idx])) or f"{col.name}: invalid value"
            reasons.at[idx] = f"{reasons.at[idx]}; {reason}" if reasons.at[idx] else reason
    return reasons
