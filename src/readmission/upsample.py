"""Larger data sets that follow a real file: for measuring how the pipeline's cost grows (``bench/scale.py``).

A data set of ``factor`` times the real file is the real file itself followed by ``factor - 1`` replicas. Each
replica is a bootstrap of the real file's *patients*: as many patients as the file holds, drawn with
replacement, each bringing all of its encounters in their original order under a new patient number and new
encounter ids. So every replica follows the file's distribution of encounters per patient and of every column
(a row is copied whole), a patient's history features (prior encounters, readmissions) still count that
patient's own earlier encounters, and the patient-grouped split assigns the new patients like any others.
A replica holds about, not exactly, as many encounters as the file (the drawn patients' encounters).

New ids: replica ``r`` (1-based) numbers its encounters ``r * 10**9 + row`` (``row`` counted from 1 in the
replica) and gives its ``draw``-th patient the first id from ``r * 10**9 + 1 + 256 * draw`` on that the
pipeline's split puts in the original patient's split: a copy is never in test while its original (or another
copy) is in train. All above the real file's ids (< 10**9): ids never collide, encounter order is kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from readmission import schema
from readmission.clean import SplitSpec, patient_draw

ID_BLOCK = 10**9  # ids of replica r start above r * ID_BLOCK; the UCI file's largest id is 443,867,222
GENERATOR_VERSION = 2  # 2: copies kept in their original's split (1 let them cross: optimistic test scores)
CANDIDATES = 256  # ids tried per copied patient for one in its original's split (test, 15 %: 0.85**256 ~ 1e-18 to miss)


def read_text_frame(path: Path) -> pd.DataFrame:
    """The CSV at ``path`` with every value as the text it holds ('?' stays '?')."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def _split_codes(patient_nbr: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """``clean.assign_split``'s decision as a code per id (0 test, 1 validation, 2 train), for many ids at once."""
    unit = patient_draw(pd.Series(patient_nbr.ravel()), spec.seed).reshape(patient_nbr.shape)
    return np.where(unit < spec.test, 0, np.where(unit < spec.test + spec.validation, 1, 2))


def _same_split_ids(first_ids: np.ndarray, originals: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """For each new patient, the first id of ``first_ids + 0 .. CANDIDATES - 1`` whose split is its original's."""
    wanted = _split_codes(originals, spec)
    ids = np.empty_like(first_ids)
    for start in range(0, len(first_ids), 10_000):  # 10,000 x CANDIDATES draws at a time
        block = first_ids[start : start + 10_000, None] + np.arange(CANDIDATES)[None, :]
        match = _split_codes(block, spec) == wanted[start : start + 10_000, None]
        if not match.any(axis=1).all():
            raise RuntimeError("no id with the original's split among the candidates")  # p < 1e-17 per patient
        ids[start : start + 10_000] = block[np.arange(len(block)), match.argmax(axis=1)]
    return ids


def replicas(real: pd.DataFrame, count: int, seed: int = 0, spec: SplitSpec | None = None) -> Iterator[pd.DataFrame]:
    """``count`` patient-bootstrap replicas of ``real`` (text frame in the raw layout), one frame at a time.

    Each copy of a patient gets an id that ``clean.assign_split`` with ``spec`` (default: the pipeline's default
    split) puts in the original's split, so no test patient has a copy in train: a copy elsewhere would be an
    exact twin of a test row (every column but the ids), and the test scores would be optimistic.
    Raises ``ValueError`` when ``real`` has no rows, ids of ``ID_BLOCK`` or more (they could collide) or more
    than ``ID_BLOCK // CANDIDATES`` patients."""
    if real.empty:
        raise ValueError("cannot resample an empty file")
    encounter, patient = (real[n].astype("int64") for n in (schema.ENCOUNTER_ID, "patient_nbr"))
    if max(int(encounter.max()), int(patient.max())) >= ID_BLOCK:
        raise ValueError(f"ids of {ID_BLOCK:,} or more in the file: replica ids could collide with them")
    order = np.lexsort((encounter.to_numpy(), patient.to_numpy()))  # by patient, then encounter
    ordered = real.iloc[order].reset_index(drop=True)
    patients, starts, sizes = np.unique(patient.to_numpy()[order], return_index=True, return_counts=True)
    if len(patients) * CANDIDATES >= ID_BLOCK:
        raise ValueError(f"more than {ID_BLOCK // CANDIDATES:,} patients: replica ids would not fit their block")
    for number in range(1, count + 1):
        draws = np.random.default_rng([seed, number]).integers(0, len(starts), len(starts))
        lengths = sizes[draws]
        first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(starts[draws], lengths) + np.arange(int(lengths.sum())) - first_row
        replica = ordered.iloc[rows].reset_index(drop=True)
        first_ids = number * ID_BLOCK + 1 + np.arange(len(draws), dtype=np.int64) * CANDIDATES
        new_ids = _same_split_ids(first_ids, patients[draws], spec or SplitSpec())
        replica["patient_nbr"] = np.repeat(new_ids, lengths).astype(str)
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
