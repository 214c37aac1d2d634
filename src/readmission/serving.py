"""Prediction for a service: the fitted pipeline's own arithmetic without its per-call overheads.

A fitted candidate pipeline spends about 100 ms on a single row, almost all of it in pandas conversions
and sklearn's input validation, which a service has already done once (the request model). ``Predictor``
compiles the parts it recognises into plain numpy and dictionary look-ups, reading the fitted state of the
pipeline itself (categories, encodings, trees), so there is no second copy of the model:

- ``prepare_features`` -> per-row Python over validated values (same rules, same outputs);
- a ``ColumnTransformer`` of ``OrdinalEncoder`` / ``TargetEncoder`` / passthrough -> look-up tables;
- ``EarlyReadmissionChain`` of ``HistGradientBoostingClassifier`` -> the boosted trees copied into flat
  arrays and walked by a numba-compiled loop that releases the GIL (no re-validation of the input, no
  per-tree call).

- the sigmoid calibration training wraps a model in when its calibration is off -> per-class numpy.

Anything it does not recognise (one-hot encoding, another estimator or calibration) runs through
the pipeline itself on a DataFrame built exactly like ``modeling.model_input``: slower, never different.
``tests/test_serving.py`` checks both paths against ``pipeline.predict_proba`` on real rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder, TargetEncoder

from readmission import schema
from readmission.clean import diagnosis_group_of
from readmission.modeling import (
    CATEGORICAL_INPUTS,
    DIAGNOSIS_INPUTS,
    MISSING_LEVEL,
    NUMERIC_INPUTS,
    EarlyReadmissionChain,
    prepare_features,
)
from readmission.threads import limit_n_jobs, thread_cap
from readmission.treeshap import Trees
from readmission.treewalk import raw_scores, walk_table

Row = Mapping[str, Any]
_INTEGER_INPUTS = frozenset(
    name
    for name in schema.MODEL_INPUT_NAMES
    if name not in schema.COLUMNS_BY_NAME
    or schema.COLUMNS_BY_NAME[name].is_integer
    or schema.COLUMNS_BY_NAME[name].kind is schema.Kind.INTEGER
)


def rows_to_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The model-input frame of validated rows (raw contract names), with ``model_input``'s dtypes."""
    columns: dict[str, Any] = {}
    for name in schema.MODEL_INPUT_NAMES:
        values = [row.get(name) for row in rows]
        if name in _INTEGER_INPUTS:
            has_missing = any(v is None for v in values)
            columns[name] = np.array(
                [np.nan if v is None else v for v in values], dtype="float64" if has_missing else "int64"
            )
        else:
            columns[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns)


@lru_cache(maxsize=4096)
def _text(value: Any) -> str:
    return MISSING_LEVEL if value is None else str(value)


@lru_cache(maxsize=8192)
def _group(code: str | None) -> str:
    group = diagnosis_group_of(code)
    return MISSING_LEVEL if group is None else group


_READ = tuple(dict.fromkeys((*CATEGORICAL_INPUTS, *DIAGNOSIS_INPUTS, *NUMERIC_INPUTS)))  # every input read


def _texts(values: Sequence[Any]) -> np.ndarray:
    """``_text`` of each value, as an object array (a string is kept as is: no call per value)."""
    return np.array([v if type(v) is str else _text(v) for v in values], dtype=object)


def prepare_columns(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """``modeling.prepare_features`` for validated rows, column by column, without pandas.

    Each row's inputs are read in one pass (``map(row.get, ...)``) and turned into columns with ``zip``: reading
    them value by value was most of a model call's interpreter time (the call holds the GIL the event loop
    needs)."""
    transposed = list(zip(*[tuple(map(row.get, _READ)) for row in rows], strict=True)) or [()] * len(_READ)
    columns = dict(zip(_READ, transposed, strict=True))
    out: dict[str, np.ndarray] = {name: _texts(columns[name]) for name in CATEGORICAL_INPUTS}
    for name in DIAGNOSIS_INPUTS:
        codes = columns[name]
        out[name] = np.array(list(map(_group, codes)), dtype=object)
        out[f"{name}_code"] = _texts(codes)
    for name in NUMERIC_INPUTS:
        out[name] = np.array([math.nan if v is None else float(v) for v in columns[name]], dtype=np.float64)
    out["visits_last_year"] = out["number_outpatient"] + out["number_emergency"] + out["number_inpatient"]
    # Counted in Python integers and stored once: adding into numpy elements one by one costs far more.
    changed, taken = [], []
    for doses in zip(*(columns[drug] for drug in schema.MEDICATIONS), strict=True):
        changed.append(doses.count("Up") + doses.count("Down"))
        taken.append(len(doses) - doses.count("No"))
    out["medications_changed"] = np.array(changed, dtype=np.float64)
    out["medications_taken"] = np.array(taken, dtype=np.float64)
    return out


Block = Callable[[dict[str, np.ndarray]], np.ndarray]


def _lookup(categories: np.ndarray) -> dict[Any, int]:
    return {value: index for index, value in enumerate(categories.tolist())}


def _ordinal_block(encoder: OrdinalEncoder, columns: list[str]) -> Block | None:
    missing = encoder.encoded_missing_value
    if encoder.handle_unknown != "use_encoded_value" or not (isinstance(missing, float) and math.isnan(missing)):
        return None
    tables = [_lookup(c) for c in encoder.categories_]
    unknown = float(encoder.unknown_value)

    def transform(data: dict[str, np.ndarray]) -> np.ndarray:
        out = np.empty((len(data[columns[0]]), len(columns)), dtype=np.float64)
        for j, (name, table) in enumerate(zip(columns, tables, strict=True)):
            out[:, j] = list(map(table.get, data[name].tolist(), repeat(unknown)))
        return out

    return transform


def _target_block(encoder: TargetEncoder, columns: list[str]) -> Block:
    tables = [_lookup(c) for c in encoder.categories_]
    n_classes = len(encoder.classes_) if encoder.target_type_ == "multiclass" else 1
    means = np.atleast_1d(np.asarray(encoder.target_mean_, dtype=np.float64))
    encodings = [np.asarray(e, dtype=np.float64) for e in encoder.encodings_]

    def transform(data: dict[str, np.ndarray]) -> np.ndarray:
        n = len(data[columns[0]])
        out = np.empty((n, len(encodings)), dtype=np.float64)
        for f, (name, table) in enumerate(zip(columns, tables, strict=True)):
            codes = np.array(list(map(table.get, data[name].tolist(), repeat(-1))), dtype=np.int64)
            unknown = codes < 0
            for k in range(n_classes):
                e = f * n_classes + k
                out[:, e] = encodings[e][np.where(unknown, 0, codes)]
                out[unknown, e] = means[k % len(means)]
        return out

    return transform


def _passthrough_block(columns: list[str]) -> Block:
    def transform(data: dict[str, np.ndarray]) -> np.ndarray:
        return np.column_stack([data[name].astype(np.float64) for name in columns])

    return transform


def _compile_encoder(encoder: Any) -> Block | None:
    """A numpy version of a fitted ColumnTransformer made of the blocks above, or None."""
    if not isinstance(encoder, ColumnTransformer) or encoder.sparse_output_:
        return None
    blocks: list[Block] = []
    for _name, transformer, columns in encoder.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        names = list(columns)
        if transformer == "passthrough" or (type(transformer) is FunctionTransformer and transformer.func is None):
            blocks.append(_passthrough_block(names))
        elif type(transformer) is OrdinalEncoder and (block := _ordinal_block(transformer, names)) is not None:
            blocks.append(block)
        elif type(transformer) is TargetEncoder:
            blocks.append(_target_block(transformer, names))
        else:
            return None

    def transform(data: dict[str, np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([block(data) for block in blocks]))

    return transform


def _lookup_table(categories: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
    """Table [column, value] -> category index (NaN when unknown) when every category is a small whole number."""
    rows = np.arange(len(categories))
    known = [c[~np.isnan(c)] for c in categories]
    if not all(len(c) and (c >= 0).all() and (c == np.floor(c)).all() and c.max() < 4096 for c in known):
        return None, rows
    width = int(max(c.max() for c in known)) + 2
    table = np.full((len(categories), width), np.nan)
    for j, c in enumerate(categories):
        for index, value in enumerate(c):
            if not np.isnan(value):
                table[j, int(value)] = index
    return table, rows


def _bits(bitset: np.ndarray) -> np.ndarray:
    """The 256 membership flags of one 8 x uint32 bitset."""
    flags: np.ndarray = ((bitset[np.arange(256) // 32] >> (np.arange(256) % 32).astype(np.uint32)) & 1).astype(bool)
    return flags


class _CompiledTrees:
    """P(class 1) of a fitted binary HistGradientBoostingClassifier, its trees walked by ``treewalk``.

    The trees' nodes are copied into flat arrays (one entry per node of every tree, for TreeSHAP) and packed
    for ``treewalk.raw_scores``, a numba-compiled loop that releases the GIL, so the event loop keeps running
    while it walks hundreds of trees for a batch. Same decisions as sklearn's predictor: missing values
    follow the split's missing direction, categories in the left bitset go left, other known categories go
    right, unknown categories are treated as missing. With categorical features the model keeps an internal
    ColumnTransformer (categories re-coded to 0..k-1, unknown ones to NaN, categorical columns first); it
    is applied here from its fitted state.
    """

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        if model.n_trees_per_iteration_ != 1:
            raise TypeError("only binary boosted trees are compiled")
        self._categorical: np.ndarray | None = None
        self._n_features = int(model.n_features_in_)
        preprocessor = getattr(model, "_preprocessor", None)
        if preprocessor is not None:
            encoder = preprocessor.named_transformers_["encoder"]
            masks = {name: np.asarray(columns, dtype=bool) for name, _, columns in preprocessor.transformers_}
            self._categorical = np.flatnonzero(masks["encoder"])
            self._numeric = np.flatnonzero(masks["numerical"])
            self._categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_]
            self._lookup, self._lookup_rows = _lookup_table(self._categories)
        predictors = [trees[0] for trees in model._predictors]
        self._baseline = float(np.ravel(model._baseline_prediction)[0])
        known_categories, feature_index = model._bin_mapper.make_known_categories_bitsets()
        feature, threshold, left, right, missing_left, value, is_leaf, cat_row = [], [], [], [], [], [], [], []
        cover: list[np.ndarray] = []
        cat_tables: list[np.ndarray] = []
        roots, offset = [], 0
        for tree in predictors:
            nodes = tree.nodes
            roots.append(offset)
            leaf = nodes["is_leaf"].astype(bool)
            index = np.arange(len(nodes)) + offset
            left.append(np.where(leaf, index, nodes["left"].astype(np.int64) + offset))
            right.append(np.where(leaf, index, nodes["right"].astype(np.int64) + offset))
            feature.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64))
            threshold.append(nodes["num_threshold"].astype(np.float64))
            missing_left.append(nodes["missing_go_to_left"].astype(bool))
            value.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
            is_leaf.append(leaf)
            cover.append(nodes["count"].astype(np.float64))
            rows = np.full(len(nodes), -1, dtype=np.int64)
            for i in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf):
                goes_left = _bits(tree.raw_left_cat_bitsets[nodes["bitset_idx"][i]])
                known = _bits(known_categories[feature_index[nodes["feature_idx"][i]]])
                cat_tables.append(
                    np.where(goes_left, True, np.where(known, False, bool(nodes["missing_go_to_left"][i])))
                )
                rows[i] = len(cat_tables) - 1
            cat_row.append(rows)
            offset += len(nodes)
        self._arrays = (
            np.array(roots, dtype=np.int64),
            np.concatenate(feature),
            np.concatenate(threshold),
            np.concatenate(left),
            np.concatenate(right),
            np.concatenate(missing_left),
            np.concatenate(is_leaf),
            np.concatenate(value),
            np.concatenate(cat_row),
            np.array(cat_tables, dtype=bool).reshape(-1, 256) if cat_tables else np.zeros((1, 256), dtype=bool),
        )
        self.cover = np.concatenate(cover)  # training samples reaching each node (TreeSHAP's weights)
        self._table = walk_table(self.shap_trees())
        self.baseline = self._baseline

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The flat node arrays (roots, feature, threshold, left, right, missing_left, is_leaf, value, cat_row,
        cat_table); features index the columns of ``recode``'s output."""
        return self._arrays

    def shap_trees(self) -> Trees:
        """The trees with their training cover, for ``treeshap.tree_shap``."""
        return Trees(*self._arrays[:8], self.cover, *self._arrays[8:])

    def input_columns(self) -> np.ndarray:
        """For each column of ``recode``'s output, the column of the model's input it comes from."""
        if self._categorical is None:
            return np.arange(self._n_features)
        return np.concatenate([self._categorical, self._numeric])

    def recode(self, x: np.ndarray) -> np.ndarray:
        """The model's input as its trees read it (categories re-coded, categorical columns first)."""
        return np.ascontiguousarray(self._recode(x), dtype=np.float64)

    def _recode(self, x: np.ndarray) -> np.ndarray:
        if self._categorical is None:
            return x
        n_categorical = len(self._categorical)
        out = np.empty((x.shape[0], n_categorical + len(self._numeric)), dtype=np.float64)
        if self._lookup is not None:  # one table lookup for all categorical columns at once
            values = x[:, self._categorical]
            width = self._lookup.shape[1]
            valid = (values >= 0) & (values < width - 1) & (values == np.floor(values))  # NaN is never valid
            index = np.where(valid, values, width - 1).astype(np.intp)  # the last column is all NaN
            out[:, :n_categorical] = self._lookup[self._lookup_rows, index]
        else:
            for j, (column, categories) in enumerate(zip(self._categorical, self._categories, strict=True)):
                values = x[:, column]
                index = np.searchsorted(categories, values).clip(max=len(categories) - 1)
                out[:, j] = np.where(categories[index] == values, index, np.nan)
        out[:, n_categorical:] = x[:, self._numeric]
        return out

    def raw(self, recoded: np.ndarray) -> np.ndarray:
        """The raw score (log-odds) of each row of ``recode``'s output, shape (rows,): the model's
        ``decision_function``, to the last bit."""
        return raw_scores(recoded, self._table, self._baseline)

    def positive(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = expit(self.raw(self._recode(x)))  # the binary log-loss link, as sklearn applies it
        return result


def _compile_estimator(estimator: Any) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """The estimator's ``predict_proba`` on encoded rows, and whether its trees were compiled (the boosted chain
    of single-output gradient-boosting models); otherwise the estimator's own method (scikit-learn's code)."""
    if (
        type(estimator) is EarlyReadmissionChain
        and type(estimator.early_) is HistGradientBoostingClassifier
        and type(estimator.later_) is HistGradientBoostingClassifier
        and estimator.early_.n_trees_per_iteration_ == 1
        and estimator.later_.n_trees_per_iteration_ == 1
    ):
        early_trees = _CompiledTrees(estimator.early_)
        later_trees = _CompiledTrees(estimator.later_)

        def chain(x: np.ndarray) -> np.ndarray:
            early = early_trees.positive(x)
            later = (1.0 - early) * later_trees.positive(x)
            return np.column_stack([early, later, 1.0 - early - later])

        return chain, True

    def generic(x: np.ndarray) -> np.ndarray:
        result: np.ndarray = estimator.predict_proba(x)
        return result

    return generic, False


def _sigmoid_calibration(model: Any) -> tuple[Any, Callable[[np.ndarray], np.ndarray]] | None:
    """(the wrapped pipeline, its calibration map) of a ``CalibratedClassifierCV`` as training makes one
    (``training._calibrate_if_needed``: one sigmoid calibrator per class over a frozen, already fitted
    pipeline, ``cv`` unused), else None.

    The map follows ``sklearn.calibration._CalibratedClassifier.predict_proba`` (scikit-learn 1.9): class k's
    probability p_k becomes expit(-(a_k * p_k + b_k)) (Platt 1999), then each row is divided by its sum, the
    uniform distribution where the sum is 0. The service checks the result against the model itself at every
    load (``inference_api.model_manager``), so a change in scikit-learn cannot slip through.
    """
    if type(model) is not CalibratedClassifierCV or len(getattr(model, "calibrated_classifiers_", ())) != 1:
        return None
    fitted = model.calibrated_classifiers_[0]
    inner = fitted.estimator.estimator if type(fitted.estimator) is FrozenEstimator else fitted.estimator
    n_classes = len(fitted.classes)
    if fitted.method != "sigmoid" or n_classes < 3 or hasattr(inner, "decision_function"):
        return None  # a binary model or a decision function would take sklearn's other branches
    columns = np.searchsorted(np.sort(fitted.classes), np.asarray(inner.classes_))
    slopes = np.array([c.a_ for c in fitted.calibrators], dtype=np.float64)
    offsets = np.array([c.b_ for c in fitted.calibrators], dtype=np.float64)

    def calibrate(probabilities: np.ndarray) -> np.ndarray:
        proba = np.zeros((len(probabilities), n_classes))
        proba[:, columns] = expit(-(slopes * probabilities + offsets))
        total = proba.sum(axis=1, keepdims=True)
        result: np.ndarray = np.divide(proba, total, out=np.full_like(proba, 1 / n_classes), where=total != 0)
        result[(result > 1.0) & (result <= 1.0 + 1e-5)] = 1.0
        return result

    return inner, calibrate


def _calibrated(
    estimate: Callable[[np.ndarray], np.ndarray], calibrate: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: calibrate(estimate(x))


PREDICTION_PATHS = ("compiled", "compiled-calibrated", "compiled-input", "compiled-input-calibrated", "pipeline")


class Predictor:
    """Class probabilities of validated rows (dicts keyed by the contract's raw names).

    ``path`` says how: ``compiled`` (all steps compiled), ``compiled-input`` (features compiled, estimator
    called as is), either with ``-calibrated`` (a sigmoid calibration of the probabilities, compiled:
    ``_sigmoid_calibration``) or ``pipeline`` (the model object itself, on a DataFrame).

    ``threads``: the most threads scikit-learn's own pools (OpenMP, BLAS) may use while the estimator or the
    pipeline runs (``readmission.threads``; None: their defaults, the machine's CPUs). The compiled path runs
    no such pool.
    """

    def __init__(self, model: Any, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        self._cap = thread_cap(threads)  # raises ValueError below 1
        if threads is not None:
            limit_n_jobs(model, threads)
        self.classes_: np.ndarray = np.asarray(model.classes_, dtype=object)
        self._encode: Block | None = None
        self._estimate: Callable[[np.ndarray], np.ndarray] | None = None
        self.path = "pipeline"
        calibrated = _sigmoid_calibration(model)
        pipeline = calibrated[0] if calibrated else model
        if isinstance(pipeline, Pipeline) and len(pipeline.steps) == 3:
            prepare, encoder, estimator = (step for _, step in pipeline.steps)
            if isinstance(prepare, FunctionTransformer) and prepare.func is prepare_features:
                self._encode = _compile_encoder(encoder)
                if self._encode is not None:
                    self._estimate, trees = _compile_estimator(estimator)
                    self.path = "compiled" if trees else "compiled-input"
        if calibrated and self._estimate is not None:
            self._estimate = _calibrated(self._estimate, calibrated[1])
            self.path += "-calibrated"

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        """Probabilities, one row per input row, columns in ``classes_`` order."""
        if self.path.startswith("compiled") and not self.path.startswith("compiled-input"):
            return self._predict(rows)  # numba and numpy only: no thread pool to cap
        with self._cap():
            return self._predict(rows)

    def _predict(self, rows: Sequence[Row]) -> np.ndarray:
        if self._encode is None or self._estimate is None:
            result: np.ndarray = self.model.predict_proba(rows_to_frame(rows))
            return result
        return self._estimate(self._encode(prepare_columns(rows)))
