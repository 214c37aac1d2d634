"""Larger data sets that follow a real file: for measuring how the pipeline's cost grows (``bench/scale.py``).

A data set of ``factor`` times the real file is the real file itself followed by ``factor - 1`` replicas. Each
replica is a bootstrap of the real file's *patients*: as many patients as the file holds, drawn with
replacement, each bringing all of its encounters in their original order under a new patient number and new
encounter ids. So every replica follows the file's distribution of encounters per patient and of every column
(a row is copied whole), a patient's history features (prior encounters, readmissions) still count that
patient's own earlier encounters, and the patient-grouped split assigns the new patients like any others.
A replica holds about, not exactly, as many encounters as the file (the drawn patients' encounters).

New ids: replica ``r`` (1-based) numbers its patients ``r * 10**9 + draw`` and its encounters
``r * 10**9 + row`` (``draw`` and ``row`` counted from 1 in the replica), above the real file's ids
(< 10**9), so ids never collide and encounter order within a patient is kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from readmission import schema

ID_BLOCK = 10**9  # ids of replica r start above r * ID_BLOCK; the UCI file's largest id is 443,867,222


def read_text_frame(path: Path) -> pd.DataFrame:
    """The CSV at ``path`` with every value as the text it holds ('?' stays '?')."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def replicas(real: pd.DataFrame, count: int, seed: int = 0) -> Iterator[pd.DataFrame]:
    """``count`` patient-bootstrap replicas of ``real`` (text frame in the raw layout), one frame at a time.

    Raises ``ValueError`` when ``real`` has no rows or ids of ``ID_BLOCK`` or more (they could collide)."""
    if real.empty:
        raise ValueError("cannot resample an empty file")
    encounter, patient = (real[n].astype("int64") for n in (schema.ENCOUNTER_ID, "patient_nbr"))
    if max(int(encounter.max()), int(patient.max())) >= ID_BLOCK:
        raise ValueError(f"ids of {ID_BLOCK:,} or more in the file: replica ids could collide with them")
    order = np.lexsort((encounter.to_numpy(), patient.to_numpy()))  # by patient, then encounter
    ordered = real.iloc[order].reset_index(drop=True)
    _, starts, sizes = np.unique(patient.to_numpy()[order], return_index=True, return_counts=True)
    for number in range(1, count + 1):
        draws = np.random.default_rng([seed, number]).integers(0, len(starts), len(starts))
        lengths = sizes[draws]
        first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(starts[draws], lengths) + np.arange(int(lengths.sum())) - first_row
        replica = ordered.iloc[rows].reset_index(drop=True)
        replica["patient_nbr"] = (number * ID_BLOCK + 1 + np.repeat(np.arange(len(draws)), lengths)).astype(str)
        replica[schema.ENCOUNTER_ID] = (number * ID_BLOCK + 1 + np.arange(len(rows))).astype(str)
        yield replica


def write_upsampled_csv(source: Path, target: Path, factor: int, seed: int = 0) -> int:
    """Write ``factor`` times ``source`` to ``target``: its bytes unchanged, then ``factor - 1`` replicas.

    Returns the number of data rows written. Raises ``ValueError`` for a factor below 1."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    real = read_text_frame(source)
    ending = _line_ending(source)
    with source.open("rb") as original, target.open("wb") as out:
        shutil.copyfileobj(original, out)
        if not _ends_with_newline(source):
            out.write(ending.encode())
    rows = len(real)
    for replica in replicas(real, factor - 1, seed):
        replica.to_csv(target, mode="a", header=False, index=False, lineterminator=ending)
        rows += len(replica)
    return rows


def _line_ending(path: Path) -> str:
    """The file's own line ending (the UCI file's is CRLF), so the replicas' lines look like the original's."""
    with path.open("rb") as handle:
        return "\r\n" if handle.readline().endswith(b"\r\n") else "\n"


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"
