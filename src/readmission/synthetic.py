"""Synthetic encounters that follow the feature contract, for demos and unit tests.

Never used in place of the real data: the product only loads what the user points it at.
The label depends on a few features (prior inpatient visits, time in hospital, diagnoses) so a
model trained on it has signal to find, but the numbers mean nothing clinically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from readmission import schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_DIAGNOSIS_POOL = (
    "250.83",
    "250.01",
    "276",
    "428",
    "414",
    "786",
    "V57",
    "486",
    "599",
    "820",
    "E878",
    "8",
    "162",
)


def synthetic_encounters(rows: int, seed: int = 0, patients: int | None = None) -> pd.DataFrame:
    """``rows`` encounters in the raw file's layout (all values as text, '?' for missing)."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    patients = patients or max(1, int(rows * 0.7))
    data: dict[str, np.ndarray] = {
        "encounter_id": rng.permutation(np.arange(100_000, 100_000 + rows * 3))[:rows],
        "patient_nbr": rng.integers(1_000, 1_000 + patients * 10, size=rows),
    }
    for col in schema.COLUMNS:
        if col.name in data or col.kind is schema.Kind.TARGET:
            continue
        if col.kind is schema.Kind.INTEGER:
            low, high = col.minimum or 0, col.maximum or 10
            # skewed towards small counts, as in the real data
            data[col.name] = np.minimum(low + rng.geometric(0.35, size=rows) - 1, high)
        elif col.kind is schema.Kind.DIAGNOSIS:
            data[col.name] = rng.choice(np.array(_DIAGNOSIS_POOL), size=rows)
        else:
            levels = np.array(col.levels)
            weights = np.geomspace(1.0, 0.05, num=len(levels))
            data[col.name] = rng.choice(levels, size=rows, p=weights / weights.sum())
    frame = pd.DataFrame(data)
    for col in schema.COLUMNS:
        if col.may_be_missing:
            frame.loc[rng.random(rows) < 0.1, col.name] = schema.MISSING
    logit = -2.2 + 0.45 * frame["number_inpatient"] + 0.05 * frame["time_in_hospital"]
    logit = logit + frame["diag_1"].isin(["428", "250.83"]) * 0.4
    p_early = 1 / (1 + np.exp(-logit))
    draw = rng.random(rows)
    frame[schema.TARGET] = np.where(draw < p_early, "<30", np.where(draw < p_early + 0.35, ">30", "NO"))
    return frame[list(schema.COLUMN_NAMES)].astype(str)


def write_synthetic_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` synthetic encounters to ``path`` in the raw file's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_encounters(rows, seed).to_csv(path, index=False)
    return path


def build_synthetic_clean(folder: Path, rows: int, seed: int = 0, split_seed: int = 42) -> Engine:
    """A CLEAN SQLite database in ``folder`` built from ``rows`` synthetic encounters by the real jobs.

    Runs the product's own RAW load and CLEAN build, so what tests and demos train on went through
    exactly the code a real run uses.
    """
    from readmission.clean import SplitSpec, build_clean
    from readmission.db import create_db_engine
    from readmission.raw import SourceFile, load_raw_batches

    source = write_synthetic_csv(folder / "data.csv", rows=rows, seed=seed)
    raw = create_db_engine(f"sqlite:///{folder / 'raw.db'}")
    try:
        load_raw_batches(raw, SourceFile.read(source))
        clean = create_db_engine(f"sqlite:///{folder / 'clean.db'}")
        build_clean(raw, clean, SplitSpec(seed=split_seed))
    finally:
        raw.dispose()
    return clean
