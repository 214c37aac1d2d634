"""Input drift: the reference profile of a model's inputs and the Population Stability Index of served inputs.

Training logs the profile of the train split's model inputs to the registered version's run
(``names.REFERENCE_PROFILE_ARTIFACT``, ``training.log_evidence_and_register``). The monitor reads it back
(``load_profile``), turns the logged inputs of the version's served predictions into the same frame
(``served_frame``) and measures each input's PSI against it (``psi``, ``DEFAULT_PSI_THRESHOLD``).

The profile is JSON: ``{"format": 1, "rows": n, "inputs": {name: entry}}``, one entry for each of
``schema.MODEL_INPUT_NAMES``, each with ``kind``, ``bins`` (labels) and ``fractions`` (of the ``n`` training rows
per bin, same length, summing to 1):

- a category or coded id (kind ``category``): one bin per level the contract declares (as text), then
  ``UNKNOWN_BIN`` (a value outside the contract the profile was built with) and ``MISSING_BIN``;
- an ICD-9 code (kind ``diagnosis_group``): the codes have no closed list (about 700 per column), so the bins are
  their clinical groups (``clean.DIAGNOSIS_GROUPS``, the grouping the model reads too), then the same two bins;
- a count (kind ``numeric``): ``edges`` are the training deciles, deduplicated (``inverted_cdf``, so every edge is
  a value seen in training); the bins are right-closed, (-inf, e1], (e1, e2], ..., (ek, inf), so a mass point
  such as 0 visits gets a bin of its own and values outside the training range fall in the first or last bin;
  then ``MISSING_BIN``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import entropy

from readmission import schema
from readmission.clean import DIAGNOSIS_GROUPS, diagnosis_group
from readmission.errors import ReadmissionError
from readmission.names import REFERENCE_PROFILE_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROFILE_FORMAT = 1
# Siddiqi (2006), "Credit Risk Scorecards", Wiley, ch. 8: PSI < 0.1 no significant shift, 0.1-0.25 some shift,
# > 0.25 a significant shift of the population (the rule of thumb, not a test: Yurdakul 2018 gives PSI's
# sampling distribution). Evidently's own default for PSI is the stricter 0.1.
DEFAULT_PSI_THRESHOLD = 0.25
# The floor of an empty bin, Evidently's 0.0001 (evidently.legacy.calculations.stattests.utils.get_binned_data,
# which replaces the zero fractions by it); here every fraction below it is raised to it, then renormalised.
PSI_FLOOR = 1e-4
MISSING_BIN = "(missing)"
UNKNOWN_BIN = "(not in the contract)"
CATEGORY, DIAGNOSIS_GROUP, NUMERIC = "category", "diagnosis_group", "numeric"
_KINDS = (CATEGORY, DIAGNOSIS_GROUP, NUMERIC)
_DECILES = np.arange(1, 10) / 10


class DriftError(ReadmissionError, ValueError):
    """Drift cannot be measured: a profile of an unknown format, an input missing from a frame, no rows."""


def _kind(name: str) -> str:
    col = schema.COLUMNS_BY_NAME.get(name)
    if col is None or col.kind is schema.Kind.INTEGER:  # a count, or a history feature (never in COLUMNS)
        return NUMERIC
    return DIAGNOSIS_GROUP if col.kind is schema.Kind.DIAGNOSIS else CATEGORY


def _numbers(values: pd.Series, name: str) -> np.ndarray:
    try:
        numbers: np.ndarray = values.astype("float64").to_numpy()
    except (TypeError, ValueError) as exc:
        raise DriftError(f"model input {name}: values that are not numbers ({exc})") from exc
    return numbers


def _as_text(values: pd.Series, name: str) -> pd.Series:
    """Levels as the contract writes them: coded ids as "1" whatever their dtype (int64, float64 with NaN)."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = pd.Series(_numbers(values, name), index=values.index)
        return numbers.map(lambda v: f"{v:g}", na_action="ignore").astype("string")
    return values.astype("string")


def _category_counts(text: pd.Series, levels: list[str]) -> np.ndarray:
    """Rows per level, then outside the levels, then missing."""
    missing = int(text.isna().sum())
    codes = pd.Index(levels, dtype=object).get_indexer(text.astype(object))  # -1: missing or not a level
    known = np.bincount(codes[codes >= 0], minlength=len(levels))
    return np.array([*known, int((codes < 0).sum()) - missing, missing], dtype=np.float64)


def _numeric_counts(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows per right-closed bin of ``edges`` (open-ended at both ends), then missing."""
    missing = np.isnan(numbers)
    bins = np.searchsorted(edges, numbers[~missing], side="left")
    return np.array([*np.bincount(bins, minlength=len(edges) + 1), int(missing.sum())], dtype=np.float64)


def _counts(entry: Mapping[str, Any], values: pd.Series, name: str) -> np.ndarray:
    """Rows of ``values`` in each bin of the profile ``entry`` (same order as its ``bins``)."""
    if entry["kind"] == NUMERIC:
        return _numeric_counts(_numbers(values, name), np.asarray(entry["edges"], dtype=np.float64))
    text = diagnosis_group(values) if entry["kind"] == DIAGNOSIS_GROUP else _as_text(values, name)
    return _category_counts(text, list(entry["bins"][:-2]))


def _missing_inputs(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    return [name for name in names if name not in frame.columns]


def _entry(name: str, values: pd.Series) -> dict[str, Any]:
    kind = _kind(name)
    if kind != NUMERIC:
        levels = DIAGNOSIS_GROUPS if kind == DIAGNOSIS_GROUP else schema.COLUMNS_BY_NAME[name].levels
        return {"kind": kind, "bins": [*levels, UNKNOWN_BIN, MISSING_BIN]}
    numbers = _numbers(values, name)
    present = numbers[~np.isnan(numbers)]
    edges = np.unique(np.quantile(present, _DECILES, method="inverted_cdf")) if present.size else np.array([])
    inner = [f"({low:g}, {high:g}]" for low, high in pairwise(edges)]
    bins = [f"<= {edges[0]:g}", *inner, f"> {edges[-1]:g}"] if edges.size else ["any value"]
    return {"kind": kind, "edges": [float(e) for e in edges], "bins": [*bins, MISSING_BIN]}


def build_profile(x: pd.DataFrame) -> dict[str, Any]:
    """The reference profile (module docstring) of the model-input frame ``x``: one row per training encounter,
    the columns of ``schema.MODEL_INPUT_NAMES`` as ``modeling.model_input`` makes them (others are ignored).

    JSON-serialisable (lists, str, int, float). Raises ``DriftError`` naming the inputs ``x`` lacks, or when it has
    no rows.
    """
    absent = _missing_inputs(x, schema.MODEL_INPUT_NAMES)
    if absent:
        raise DriftError(f"the training frame lacks the model input(s) {', '.join(absent)}: give model_input(frame)")
    if x.empty:
        raise DriftError("the training frame has no rows: a profile needs at least one")
    inputs = {}
    for name in schema.MODEL_INPUT_NAMES:
        entry = _entry(name, x[name])
        entry["fractions"] = (_counts(entry, x[name], name) / len(x)).tolist()
        inputs[name] = entry
    return {"format": PROFILE_FORMAT, "rows": len(x), "inputs": inputs}


def _entry_problem(entry: Any) -> str | None:
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind not in _KINDS:
        return f"unknown kind {kind!r} (this version knows {', '.join(_KINDS)})"
    bins, fractions, edges = entry.get("bins"), entry.get("fractions"), entry.get("edges")
    if not isinstance(bins, list) or not isinstance(fractions, list) or len(bins) != len(fractions):
        return "'bins' and 'fractions' must be lists of the same length"
    if kind == NUMERIC and not (isinstance(edges, list) and len(edges) + 2 == len(bins)):
        return "a numeric input needs 'edges' and len(edges) + 2 bins (the open-ended ones and missing)"
    if kind != NUMERIC and bins[-2:] != [UNKNOWN_BIN, MISSING_BIN]:
        return f"a categorical input's last bins must be {UNKNOWN_BIN!r} and {MISSING_BIN!r}"
    return None


def check_profile(profile: Any) -> dict[str, Any]:
    """``profile`` itself when this version can measure drift against it; ``DriftError`` saying why not (a format
    other than ``PROFILE_FORMAT``, no inputs, or an input's entry it cannot read, by name)."""
    found = profile.get("format") if isinstance(profile, dict) else type(profile).__name__
    if found != PROFILE_FORMAT:
        raise DriftError(
            f"reference profile of unknown format {found!r}: this version reads format {PROFILE_FORMAT} "
            "(retrain the model with this version to log a profile it reads)"
        )
    inputs = profile.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise DriftError("the reference profile lists no inputs")
    for name, entry in inputs.items():
        if (problem := _entry_problem(entry)) is not None:
            raise DriftError(f"reference profile, model input {name}: {problem}")
    checked: dict[str, Any] = profile
    return checked


def served_frame(inputs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The model-input frame of logged inputs: each item one served encounter as the prediction log stores it
    (``schema.EncounterFeatures`` dumped: raw contract names, None for missing; other keys such as
    ``encounter_id`` are ignored), converted as the service converts them for the model
    (``serving.rows_to_frame``: ``modeling.model_input``'s columns and dtypes). One row per item, in order.

    Raises ``DriftError`` naming the first item that lacks a model input, and the inputs it lacks.
    """
    from readmission.serving import rows_to_frame  # numba and the compiled model: only when serving is needed

    wanted = frozenset(schema.MODEL_INPUT_NAMES)
    for index, row in enumerate(inputs):
        if not wanted.issubset(row.keys()):
            absent = [name for name in schema.MODEL_INPUT_NAMES if name not in row]
            raise DriftError(f"logged inputs #{index} lack the model input(s) {', '.join(absent)}")
    return rows_to_frame(inputs)


def served_fractions(profile: Mapping[str, Any], served: pd.DataFrame) -> dict[str, np.ndarray]:
    """For each input of ``profile``, the fraction of the ``served`` rows in each of its bins (arrays in the order
    of its ``bins``, summing to 1). ``served``: a model-input frame (``served_frame``).

    Raises ``DriftError`` for a profile ``check_profile`` refuses, a frame without rows, or one lacking inputs of
    the profile (named).
    """
    inputs = check_profile(profile)["inputs"]
    absent = _missing_inputs(served, list(inputs))
    if absent:
        raise DriftError(f"the served frame lacks the model input(s) {', '.join(absent)} of the reference profile")
    if served.empty:
        raise DriftError("the served frame has no rows: PSI needs at least one")
    return {name: _counts(entry, served[name], name) / len(served) for name, entry in inputs.items()}


def floored(fractions: Any) -> np.ndarray:
    """``fractions`` with every value below ``PSI_FLOOR`` raised to it, renormalised to sum to 1."""
    raised = np.maximum(np.asarray(fractions, dtype=np.float64), PSI_FLOOR)
    result: np.ndarray = raised / raised.sum()
    return result


def psi(profile: Mapping[str, Any], served: pd.DataFrame) -> dict[str, float]:
    """Population Stability Index of each input of ``profile`` (name -> PSI, dimensionless, >= 0; 0 when the
    served rows fall in the bins in the training proportions) for the model-input frame ``served``.

    PSI = sum_i (a_i - e_i) ln(a_i / e_i) over the bins, e the training fractions and a the served ones (Siddiqi
    2006, "Credit Risk Scorecards", ch. 8; its statistical properties: Yurdakul 2018, "Statistical Properties of
    the Population Stability Index", Western Michigan University). It is the symmetrised Kullback-Leibler
    divergence, PSI = KL(a || e) + KL(e || a), and is computed so, as ``scipy.stats.entropy(a, e) +
    scipy.stats.entropy(e, a)``. Both distributions are ``floored`` first (an empty bin would make it infinite).
    Above ``DEFAULT_PSI_THRESHOLD`` the population has shifted. Errors: as ``served_fractions``.
    """
    actual = served_fractions(profile, served)
    values = {}
    for name, entry in profile["inputs"].items():
        expected, observed = floored(entry["fractions"]), floored(actual[name])
        divergence = float(entropy(observed, expected) + entropy(expected, observed))
        values[name] = max(divergence, 0.0)  # each KL is >= 0 (Gibbs); rounding may leave -1e-17
    return values


def load_profile(client_or_uri: MlflowClient | str, run_id: str) -> dict[str, Any] | None:
    """The reference profile training logged to run ``run_id`` (a model version's ``run_id``), or None when the
    run has none (a version trained before profiles were logged).

    ``client_or_uri``: an ``MlflowClient`` or a tracking URI. Raises ``DriftError`` for a profile of a format this
    version cannot read (``check_profile``); MLflow's own errors (server down, refused) pass through.
    """
    from mlflow import MlflowClient

    client = MlflowClient(client_or_uri, client_or_uri) if isinstance(client_or_uri, str) else client_or_uri
    if REFERENCE_PROFILE_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="reference-profile-") as folder:
        path = client.download_artifacts(run_id, REFERENCE_PROFILE_ARTIFACT, folder)
        profile = json.loads(Path(path).read_text(encoding="utf-8"))
    return check_profile(profile)
