"""Batch scoring of a file in the raw data format: validate every row first, send nothing unless all pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from readmission import schema
from readmission.csvfile import parse_records, read_records
from readmission.errors import SourceFormatError
from readmission.validation import eligibility_problems, repeated_ids, row_problems
from readmission_ui.client import ApiClient
from readmission_ui.labels import OUTCOME_LABELS

CLASSES = schema.TARGET_LABELS  # NO, >30, <30: the clinical order
KEPT_COLUMNS = ("encounter_id", "patient_nbr", schema.TARGET)  # from the file, beside the results, when it has them


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

    The file is read and its cells judged by the same library code as ``readmission load-raw``
    (``readmission.csvfile``, ``readmission.validation``), so the page and the loader agree on every file.
    Raises BatchFileError when the file as a whole is unusable; bad rows are listed, not raised.
    """
    try:
        records = read_records(content, "the file")
    except SourceFormatError as exc:
        raise BatchFileError(str(exc)) from None
    missing = [name for name in schema.FEATURE_NAMES if name not in records.header]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise BatchFileError(
            f"the file lacks {len(missing)} column(s) of the raw data format: {shown}. "
            "Use the header of diabetic_data.csv (identifiers and `readmitted` are optional)."
        )
    if not records.lines:
        raise BatchFileError("the file has a header but no rows")
    if len(records.lines) > max_rows:
        raise BatchFileError(
            f"the file has {len(records.lines):,} rows; at most {max_rows:,} per upload (MAX_UPLOAD_ROWS)"
        )
    frame, unreadable = parse_records(records.header, records.lines)
    problems = {i: [reason] for i, reason in unreadable.items()}
    for i, found in [*row_problems(frame).items(), *eligibility_problems(frame).items()]:
        problems.setdefault(i, []).extend(found)
    valid = frame.drop(index=[i for i in problems if i in frame.index])
    for i, found in repeated_ids(valid, "file").items():  # among valid rows, as the loader checks them
        problems.setdefault(i, []).extend(found)
    row_errors = [(records.line_numbers[i], p) for i in sorted(problems) for p in problems[i]]
    if row_errors:
        return CheckedFile(frame.reset_index(drop=True), [], row_errors)
    encounters = [schema.raw_to_encounter(record) for record in frame.to_dict(orient="records")]
    return CheckedFile(frame.reset_index(drop=True), encounters, row_errors)


EXPLAINED_FACTORS = 3  # factors per row added to the download when the user asks for explanations
EXPLAIN_MAX_ROWS = 100  # the API's limit of explained encounters per request (inference_api.explaining)


def factor_columns(explanation: dict[str, Any]) -> dict[str, Any]:
    """The download's columns of one row's explanation: for each listed factor k (largest first), its feature,
    the value sent and the signed contribution (``factor_k_*``), and the scale of the contributions."""
    out: dict[str, Any] = {"explanation_scale": explanation["scale"]}
    for k, item in enumerate(explanation["contributions"], start=1):
        out[f"factor_{k}_feature"] = item["feature"]
        out[f"factor_{k}_value"] = item["value"]
        out[f"factor_{k}_contribution"] = item["contribution"]
    return out


def score(
    client: ApiClient,
    checked: CheckedFile,
    chunk_rows: int,
    progress: Callable[[int, int], None] = lambda d, t: None,
    explain: bool = False,
) -> tuple[pd.DataFrame, set[str]]:
    """Score every encounter through POST /predict/batch in chunks; the results beside the file's identifiers
    and recorded outcome (``KEPT_COLUMNS``), and the model versions that answered (a champion may move during a
    long run). With ``explain``, each row also gets its top ``EXPLAINED_FACTORS`` factors (``factor_columns``);
    ApiFailed (409) when the served model has no explanations."""
    if not checked.valid:
        raise ValueError("the file has invalid rows; nothing is sent")
    rows: list[dict[str, Any]] = []
    versions: set[str] = set()
    total = len(checked.encounters)
    if explain:  # the API explains at most this many encounters per request
        chunk_rows = min(chunk_rows, EXPLAIN_MAX_ROWS)
    for start in range(0, total, chunk_rows):
        chunk = checked.encounters[start : start + chunk_rows]
        answer = client.predict_batch(chunk, explain_top=EXPLAINED_FACTORS if explain else None)
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
                    **(factor_columns(scores["explanation"]) if explain else {}),
                }
            )
        progress(min(start + chunk_rows, total), total)
    results = pd.DataFrame(rows)
    kept = [c for c in KEPT_COLUMNS if c in checked.frame.columns]
    return pd.concat([checked.frame[kept].reset_index(drop=True), results], axis=1), versions


def summary(results: pd.DataFrame) -> dict[str, Any]:
    """Counts by risk band and predicted class, and the mean 30-day risk."""
    return {
        "rows": len(results),
        "mean_risk_30_days": float(results["risk_30_days"].mean()),
        "bands": results["risk_band"].value_counts().reindex(["low", "medium", "high"], fill_value=0).to_dict(),
        "classes": results["predicted_class"].value_counts().reindex(list(CLASSES), fill_value=0).to_dict(),
    }


@dataclass(frozen=True)
class OutcomeComparison:
    """How the predicted 30-day risks compare with the outcomes a scored file records (its `readmitted`)."""

    by_outcome: pd.DataFrame  # per recorded outcome, in clinical order: outcome, encounters, mean 30-day risk
    early: int  # encounters readmitted within 30 days (<30)
    other: int  # encounters not readmitted within 30 days (NO or >30)
    roc_auc: float | None  # of the 30-day risk against readmitted == '<30'; None unless both kinds are present


def compare_with_outcomes(results: pd.DataFrame) -> OutcomeComparison | None:
    """The predicted 30-day risk per recorded outcome, and its ROC-AUC against readmission within 30 days;
    None when the file records no outcome."""
    if schema.TARGET not in results.columns:
        return None
    risk = results.groupby(schema.TARGET, sort=False)["risk_30_days"]
    present = [c for c in CLASSES if c in risk.groups]
    by_outcome = pd.DataFrame(
        {
            "recorded outcome": [OUTCOME_LABELS[c] for c in present],
            "encounters": risk.size().reindex(present).to_numpy(),
            "mean predicted 30-day risk": risk.mean().reindex(present).to_numpy(),
        }
    )
    early = results[schema.TARGET].eq(schema.POSITIVE_LABEL)
    both = bool(early.any()) and not bool(early.all())
    auc = roc_auc(results["risk_30_days"], early) if both else None
    return OutcomeComparison(by_outcome, int(early.sum()), int((~early).sum()), auc)


def roc_auc(scores: pd.Series, positive: pd.Series) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` (boolean) rows: the chance that a positive
    row scores above a negative one, ties counting half (the Mann-Whitney statistic from average ranks; the
    page's image has no scikit-learn)."""
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if not n_positive or not n_negative:
        raise ValueError("ROC-AUC needs both positive and negative rows")
    ranks = scores.rank(method="average")
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))
