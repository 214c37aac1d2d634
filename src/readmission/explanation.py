"""Why this risk: exact, additive contributions of each input to a prediction of the 30-day risk.

``Explainer(model).explain(rows)`` gives, for each validated row, one contribution per model feature (the
contract's fields, plus the three sums ``prepare_features`` adds) that adds up, with a base value, to the
quantity the model computes for P(<30):

- boosted trees in the ``EarlyReadmissionChain``: the early link's log-odds (sum of its trees' leaf values),
  explained by exact path-dependent TreeSHAP (``readmission.treeshap``, over the serving walker's trees);
- logistic regression in the chain: the early link's log-odds, explained by its exact linear terms
  w_j * (x_j - mean_j) with the training mean as the reference (the linear-model SHAP values under feature
  independence: Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions", section 4.2);
- a random forest: P(<30) itself, a mean of its trees' leaf proportions, explained by TreeSHAP on the
  probability scale (an average of trees is additive in probability, not in log-odds).

Encoded columns that come from the same input (an ICD-9 code's group and its target encodings, the one-hot
columns of a category) are summed, which keeps the additivity. A model recalibrated by training
(``CalibratedClassifierCV``) is explained before its calibration: ``calibrated`` says so. The served risk is
then recalibrated from all three class probabilities (a sigmoid per class, then each row normalised), so it
is not a function of the explained value alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import expit, logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, TargetEncoder

from readmission import schema
from readmission.modeling import DERIVED_NUMERIC, DIAGNOSIS_INPUTS, EarlyReadmissionChain, prepare_features
from readmission.serving import Row, _compile_encoder, _CompiledTrees, prepare_columns, rows_to_frame
from readmission.treeshap import Trees, expected_value, path_width, tree_shap

LOG_ODDS, PROBABILITY = "log-odds", "probability"
DERIVED_DESCRIPTIONS: dict[str, str] = {
    "visits_last_year": "Outpatient + emergency + inpatient visits in the year before the encounter",
    "medications_changed": "Diabetes medications whose dose went up or down during the encounter",
    "medications_taken": "Diabetes medications prescribed (any dose other than 'No')",
}
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "visits_last_year": ("number_outpatient", "number_emergency", "number_inpatient"),
    "medications_changed": schema.MEDICATIONS,
    "medications_taken": schema.MEDICATIONS,
}


class NotExplainableError(TypeError):
    """The served model is of a kind ``Explainer`` cannot explain exactly; the message says which and why."""


@dataclass(frozen=True)
class Explanations:
    """Contributions of a batch of rows.

    ``contributions`` has shape (rows, len(features)); ``base_value + contributions.sum(axis=1) == values``
    to rounding. ``scale`` is ``log-odds`` or ``probability``; ``calibrated`` means the served risk is a
    recalibration of ``values`` (see the module's docstring).
    """

    features: tuple[str, ...]
    contributions: np.ndarray
    base_value: float
    values: np.ndarray
    scale: str
    calibrated: bool

    @property
    def risks(self) -> np.ndarray:
        """The P(<30) each row's value stands for (the inverse logit of a log-odds): the served 30-day risk
        unless ``calibrated``."""
        result: np.ndarray = expit(self.values) if self.scale == LOG_ODDS else self.values
        return result


def describe(feature: str) -> str:
    """A model feature in words: the contract's description of the field, or what a derived sum counts."""
    if feature in DERIVED_DESCRIPTIONS:
        return DERIVED_DESCRIPTIONS[feature]
    if feature in schema.COLUMNS_BY_NAME:
        return schema.COLUMNS_BY_NAME[feature].description
    return next((h.description for h in schema.HISTORY_FEATURES if h.name == feature), feature)


def feature_values(features: Sequence[str], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per row, the value of each feature as the request sent it (derived sums computed as the model does)."""
    derived = [f for f in features if f in DERIVED_NUMERIC]
    computed = prepare_columns(rows) if derived else {}
    out = []
    for i, row in enumerate(rows):
        values = {f: row.get(f) for f in features if f not in DERIVED_NUMERIC}
        values.update({f: int(computed[f][i]) for f in derived})
        out.append(values)
    return out


_CODE_COLUMNS = {f"{name}_code": name for name in DIAGNOSIS_INPUTS}


def _source_feature(column: str) -> str:
    """The model feature an encoder input column belongs to (``diag_1_code`` is part of ``diag_1``)."""
    return _CODE_COLUMNS.get(column, column)


def _outputs_per_input(transformer: Any, n_inputs: int) -> list[int]:
    """How many encoded columns each input column of one ColumnTransformer block becomes."""
    if type(transformer) is TargetEncoder:
        return [len(transformer.classes_) if transformer.target_type_ == "multiclass" else 1] * n_inputs
    if type(transformer) is OneHotEncoder:
        if transformer.drop_idx_ is not None:
            raise NotExplainableError("one-hot encoding with dropped levels is not explained")
        try:
            infrequent = transformer.infrequent_categories_
        except AttributeError:  # defined only when min_frequency or max_categories is set
            infrequent = [None] * n_inputs
        return [
            len(c) - (len(rare) - 1 if rare is not None else 0)
            for c, rare in zip(transformer.categories_, infrequent, strict=True)
        ]
    return [1] * n_inputs  # ordinal, passthrough and scaling keep one column per input


def encoded_features(encoder: ColumnTransformer) -> list[str]:
    """The model feature of each column of the fitted encoder's output, in output order.

    Raises ``NotExplainableError`` when a block's width is not what its transformer should give.
    """
    names: list[str] = [""] * sum(s.stop - s.start for s in encoder.output_indices_.values())
    for block, transformer, columns in encoder.transformers_:
        where = encoder.output_indices_[block]
        if transformer == "drop" or where.stop == where.start:
            continue
        counts = _outputs_per_input(transformer, len(columns))
        if sum(counts) != where.stop - where.start:
            raise NotExplainableError(f"the encoder's block {block!r} has an unexpected width")
        position = where.start
        for column, count in zip(columns, counts, strict=True):
            names[position : position + count] = [_source_feature(column)] * count
            position += count
    return names


def _unwrap(model: Any) -> tuple[Any, bool]:
    """(the fitted pipeline, whether training recalibrated it)."""
    if type(model) is CalibratedClassifierCV and len(getattr(model, "calibrated_classifiers_", ())) == 1:
        inner = model.calibrated_classifiers_[0].estimator
        return (inner.estimator if type(inner) is FrozenEstimator else inner), True
    return model, False


Encode = Callable[[Sequence[Row]], np.ndarray]


def _encoder_of(pipeline: Pipeline) -> tuple[ColumnTransformer, Encode]:
    """The pipeline's encoder and a function from validated rows to its dense output."""
    if not (isinstance(pipeline, Pipeline) and len(pipeline.steps) == 3):
        raise NotExplainableError("only the training pipelines (prepare, encode, model) are explained")
    prepare, encoder = pipeline.steps[0][1], pipeline.steps[1][1]
    if not (isinstance(prepare, FunctionTransformer) and prepare.func is prepare_features):
        raise NotExplainableError("the pipeline does not start with prepare_features")
    if not isinstance(encoder, ColumnTransformer):
        raise NotExplainableError("the pipeline's encoder is not a ColumnTransformer")
    compiled = _compile_encoder(encoder)
    if compiled is not None:
        return encoder, lambda rows: compiled(prepare_columns(rows))
    front = Pipeline(pipeline.steps[:2])

    def encode(rows: Sequence[Row]) -> np.ndarray:
        out = front.transform(rows_to_frame(rows))
        return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float64)

    return encoder, encode


Attribute = Callable[[np.ndarray], tuple[np.ndarray, float]]  # encoded rows -> (SHAP values per column, base)


def _boosted(model: HistGradientBoostingClassifier) -> Attribute:
    compiled = _CompiledTrees(model)
    trees = compiled.shap_trees()
    base = compiled.baseline + expected_value(trees)
    columns, width = compiled.input_columns(), path_width(trees)

    def attribute(x: np.ndarray) -> tuple[np.ndarray, float]:
        phi = tree_shap(compiled.recode(x), trees, width)
        out = np.zeros_like(x, dtype=np.float64)
        out[:, columns] = phi
        return out, base

    return attribute


def _linear(model: LogisticRegression, reference: np.ndarray) -> Attribute:
    weights, intercept = model.coef_[0].astype(np.float64), float(model.intercept_[0])
    base = float(reference @ weights) + intercept

    def attribute(x: np.ndarray) -> tuple[np.ndarray, float]:
        return (x - reference) * weights, base

    return attribute


def forest_trees(model: RandomForestClassifier, label: str) -> Trees:
    """The forest's trees for ``tree_shap``, leaf values being each tree's share of P(``label``): its leaf
    proportion divided by the number of trees."""
    column = list(model.classes_).index(label)
    parts: list[list[np.ndarray]] = [[] for _ in range(9)]
    offset = 0
    for estimator in model.estimators_:
        tree = estimator.tree_
        index = np.arange(tree.node_count)
        leaf = tree.children_left < 0
        proportions = tree.value[:, 0, :] / tree.value[:, 0, :].sum(axis=1, keepdims=True)
        for store, part in zip(
            parts,
            (
                np.array([offset]),
                np.where(leaf, 0, tree.feature),
                tree.threshold,
                np.where(leaf, index, tree.children_left) + offset,
                np.where(leaf, index, tree.children_right) + offset,
                tree.missing_go_to_left.astype(bool),
                leaf,
                np.where(leaf, proportions[:, column] / len(model.estimators_), 0.0),
                tree.weighted_n_node_samples,
            ),
            strict=True,
        ):
            store.append(part)
        offset += tree.node_count
    kinds = (np.int64, np.int64, np.float64, np.int64, np.int64, bool, bool, np.float64, np.float64)
    arrays = [np.concatenate(p).astype(k) for p, k in zip(parts, kinds, strict=True)]
    no_categories = np.full(offset, -1, dtype=np.int64), np.zeros((1, 256), dtype=bool)
    return Trees._make([*arrays, *no_categories])


def _forest(model: RandomForestClassifier) -> Attribute:
    trees = forest_trees(model, schema.POSITIVE_LABEL)
    base, width = expected_value(trees), path_width(trees)

    def attribute(x: np.ndarray) -> tuple[np.ndarray, float]:
        # scikit-learn's trees compare float32 values with their thresholds: round the same way.
        return tree_shap(x.astype(np.float32).astype(np.float64), trees, width), base

    return attribute


def _attribution(estimator: Any) -> tuple[Attribute, str]:
    """How the estimator's 30-day output is attributed to its input columns, and on which scale."""
    if type(estimator) is RandomForestClassifier:
        return _forest(estimator), PROBABILITY
    if type(estimator) is not EarlyReadmissionChain:
        raise NotExplainableError(f"{type(estimator).__name__} models are not explained")
    early = estimator.early_
    if type(early) is HistGradientBoostingClassifier and early.n_trees_per_iteration_ == 1:
        return _boosted(early), LOG_ODDS
    if type(early) is LogisticRegression and early.coef_.shape[0] == 1:
        reference = getattr(estimator, "input_mean_", None)
        if reference is None:
            raise NotExplainableError("this model was trained before explanations: train it again")
        return _linear(early, np.asarray(reference, dtype=np.float64)), LOG_ODDS
    raise NotExplainableError(f"a chain of {type(early).__name__} models is not explained")


class Explainer:
    """Exact contributions to the 30-day risk of a fitted training pipeline (see the module's docstring).

    Raises ``NotExplainableError`` at construction for a model it cannot explain exactly (a multinomial
    logistic regression trained before the chain, another estimator or encoder).
    """

    def __init__(self, model: Any) -> None:
        pipeline, self.calibrated = _unwrap(model)
        self._pipeline = pipeline
        encoder, self._encode = _encoder_of(pipeline)
        self._attribute, self.scale = _attribution(pipeline.steps[2][1])
        columns = encoded_features(encoder)
        self.features: tuple[str, ...] = tuple(dict.fromkeys(columns))
        self._groups = np.zeros((len(columns), len(self.features)))
        self._groups[np.arange(len(columns)), [self.features.index(c) for c in columns]] = 1.0

    def explain(self, rows: Sequence[Row]) -> Explanations:
        """Contributions of validated rows (dicts keyed by the contract's names), one row each."""
        phi, base = self._attribute(self._encode(rows))
        contributions = phi @ self._groups
        values = base + contributions.sum(axis=1)
        return Explanations(self.features, contributions, base, values, self.scale, self.calibrated)

    def model_output(self, rows: Sequence[Row]) -> np.ndarray:
        """What ``explain`` decomposes, computed by the model itself (scikit-learn's ``predict_proba`` of the
        pipeline, before any recalibration): P(<30), or its log-odds on the log-odds scale. Shape (rows,)."""
        probabilities = self._pipeline.predict_proba(rows_to_frame(rows))
        early = probabilities[:, list(self._pipeline.classes_).index(schema.POSITIVE_LABEL)].astype(np.float64)
        result: np.ndarray = logit(early) if self.scale == LOG_ODDS else early
        return result
