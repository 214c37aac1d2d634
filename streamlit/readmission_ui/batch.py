"""Batch scoring of a file in the raw data format: validate every row first, send nothing unless all pass."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from readmission import schema
from readmission_ui.client import ApiClient

CLASSES = ("NO", ">30", "<30")


class BatchFileError(ValueError):
    """The file as a whole cannot be read as encounters (not CSV, missing columns, too many rows)."""


@dataclass
class CheckedFile:
    """A parsed upload: its rows, the encounters to send, and the problems of each bad row."""

    frame: pd.DataFrame
    encounters: list[dict[str, Any]]
    row_errors: list[tuple[int, str]] = field(default_factory=list)  # (line number in the file, problem)

    @property
    def valid(self) -> bool:
        return not self.row_errors


def check_file(content: bytes, max_rows: int) -> CheckedFile:
    """Parse ``content`` (CSV, the raw file's columns) and check every row against the feature contract.

    Raises BatchFileError when the file as a whole is unusable; bad rows are listed, not raised.
    """
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchFileError(f"the file is not a readable CSV ({exc}); export it as comma-separated UTF-8") from None
    missing = [name for name in schema.FEATURE_NAMES if name not in frame.columns]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise BatchFileError(
            f"the file lacks {len(missing)} column(s) of the raw data format: {shown}. "
            "Use the header of diabetic_data.csv (identifiers and `readmitted` are optional)."
        )
    if frame.empty:
        raise BatchFileError("the file has a header but no rows")
    if len(frame) > max_rows:
        raise BatchFileError(f"the file has {len(frame):,} rows; at most {max_rows:,} per upload (MAX_UPLOAD_ROWS)")
    row_errors: list[tuple[int, str]] = []
    encounters: list[dict[str, Any]] = []
    for index, record in enumerate(frame.to_dict(orient="records")):
        problems = schema.raw_violations(record)
        line = index + 2  # the header is line 1
        row_errors += [(line, problem) for problem in problems]
        if not problems:
            encounters.append(schema.raw_to_encounter(record))
    return CheckedFile(frame, encounters if not row_errors else [], row_errors)


def score(
    client: ApiClient, checked: CheckedFile, chunk_rows: int, progress: Callable[[int, int], None] = lambda d, t: None
) -> tuple[pd.DataFrame, set[str]]:
    """Score every encounter through POST /predict/batch in chunks; the results beside the file's identifiers,
    and the model versions that answered (a champion may move during a long run)."""
    if not checked.valid:
        raise ValueError("the file has invalid rows; nothing is sent")
    rows: list[dict[str, Any]] = []
    versions: set[str] = set()
    total = len(checked.encounters)
    for start in range(0, total, chunk_rows):
        answer = client.predict_batch(checked.encounters[start : start + chunk_rows])
        model = answer["model"]
        versions.add(f"{model['name']} v{model['version']} (@{model['alias']})")
        for scores in answer["predictions"]:
            rows.append(
                {
                    "predicted_class": scores["predicted_class"],
                    "risk_30_days": scores["risk_30_days"],
                    "risk_band": scores["risk_band"],
                    **{f"p_{name}": scores["probabilities"][name] for name in CLASSES},
                    "model_version": model["version"],
                }
            )
        progress(min(start + chunk_rows, total), total)
    results = pd.DataFrame(rows)
    ids = [c for c in ("encounter_id", "patient_nbr") if c in checked.frame.columns]
    return pd.concat([checked.frame[ids].reset_index(drop=True), results], axis=1), versions


def summary(results: pd.DataFrame) -> dict[str, Any]:
    """Counts by risk band and predicted class, and the mean 30-day risk."""
    return {
        "rows": len(results),
        "mean_risk_30_days": float(results["risk_30_days"].mean()),
        "bands": results["risk_band"].value_counts().reindex(["low", "medium", "high"], fill_value=0).to_dict(),
        "classes": results["predicted_class"].value_counts().reindex(list(CLASSES), fill_value=0).to_dict(),
    }
