"""The packed tree walk gives scikit-learn's raw scores to the last bit, whatever the trees, the rows and the
batch: numeric and categorical splits, missing values both ways, unknown categories, one row or many."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier

from readmission.serving import _CompiledTrees
from readmission.treewalk import CATEGORICAL, LEAF, MISSING_LEFT, raw_scores, walk_table


def _data(seed: int, rows: int, categories: int, missing: float) -> tuple[np.ndarray, np.ndarray]:
    """Two numeric and two categorical columns (codes 0..categories-1), a share ``missing`` of NaN cells."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(size=rows), rng.exponential(size=rows), *(rng.integers(0, categories, rows) for _ in range(2))]
    ).astype(np.float64)
    x[rng.random(x.shape) < missing] = np.nan
    signal = np.nan_to_num(x[:, 0]) + (np.nan_to_num(x[:, 2], nan=categories) % 3 == 0) - np.isnan(x[:, 3])
    return x, (signal + rng.normal(scale=0.5, size=rows) > 0.5).astype(int)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    categories=st.integers(2, 40),
    missing=st.sampled_from([0.0, 0.05, 0.3]),
    leaves=st.integers(3, 31),
    batch=st.integers(1, 300),
)
def test_the_walk_equals_decision_function_to_the_last_bit(
    seed: int, categories: int, missing: float, leaves: int, batch: int
) -> None:
    x, y = _data(seed, 800, categories, missing)
    model = HistGradientBoostingClassifier(
        max_iter=30, max_leaf_nodes=leaves, categorical_features=[2, 3], min_samples_leaf=5, random_state=seed
    ).fit(x, y)
    new, _ = _data(seed + 1, batch, categories + 3, missing)  # codes the model never saw: unknown categories
    trees = _CompiledTrees(model)
    _, feature, threshold, *_, is_leaf, _, cat_row, _ = trees.arrays
    splits = np.flatnonzero(~is_leaf & (cat_row < 0))  # numeric splits: a value on the threshold goes left
    if splits.size:
        picked = splits[np.random.default_rng(seed).integers(0, splits.size, batch)]
        new[np.arange(batch), trees.input_columns()[feature[picked]]] = threshold[picked]
    np.testing.assert_array_equal(trees.raw(trees.recode(new)), model.decision_function(new))


def test_the_packed_table_keeps_every_decision_of_the_flat_arrays() -> None:
    x, y = _data(3, 600, 12, 0.1)
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features=[2, 3], random_state=0).fit(x, y)
    arrays = _CompiledTrees(model).arrays
    roots, feature, threshold, left, right, missing_left, is_leaf, value, cat_row, cat_table = arrays
    table = walk_table(*arrays)
    assert (table.flags & LEAF > 0).tolist() == is_leaf.tolist()
    assert (table.flags & MISSING_LEFT > 0).tolist() == missing_left.tolist()
    assert (table.flags & CATEGORICAL > 0).tolist() == (cat_row >= 0).tolist()
    np.testing.assert_array_equal(table.split, np.where(is_leaf, value, threshold))
    for node in np.flatnonzero(cat_row >= 0):  # each categorical split's 256 flags, as bits
        words = table.goes_left[table.categories[node]]
        bits = [(int(words[c // 64]) >> (c % 64)) & 1 for c in range(256)]
        assert bits == cat_table[cat_row[node]].astype(int).tolist()
    assert table.roots.tolist() == roots.tolist() and table.left.tolist() == left.tolist()
    assert table.feature.tolist() == feature.tolist() and table.right.tolist() == right.tolist()


def test_a_table_of_no_rows_and_an_empty_batch() -> None:
    x, y = _data(4, 300, 5, 0.0)
    model = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(x[:, :2], y)
    trees = _CompiledTrees(model)
    assert raw_scores(np.empty((0, 2)), walk_table(*trees.arrays), trees.baseline).shape == (0,)


def test_a_model_too_large_for_32_bit_indexes_is_refused() -> None:
    huge = np.zeros(2**31, dtype=np.bool_)  # 2 GiB of flags: only the length is read before the refusal
    small = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="more than a 32-bit node index holds"):
        walk_table(small, huge, small, small, small, small, small, small, small, np.zeros((1, 256), dtype=bool))
