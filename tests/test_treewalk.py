"""The packed tree walk gives scikit-learn's raw scores to the last bit, whatever the trees, the rows and the
batch: numeric and categorical splits (codes in all four words of a split's flags), missing values both ways,
unknown categories, values on a threshold, no categorical feature at all, one row or many."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier

from readmission.serving import _CompiledTrees
from readmission.treeshap import Trees
from readmission.treewalk import CATEGORICAL, LEAF, MISSING_LEFT, raw_scores, walk_table


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to the last bit (``assert_array_equal`` takes -0.0 for 0.0)."""
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


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
    categories=st.sampled_from([2, 5, 40, 70, 130, 200, 250]),  # codes past 63, 127 and 191: every word read
    missing=st.sampled_from([0.0, 0.05, 0.3]),
    leaves=st.integers(3, 31),
    batch=st.integers(1, 300),
    categorical=st.booleans(),
)
def test_the_walk_equals_decision_function_to_the_last_bit(
    seed: int, categories: int, missing: float, leaves: int, batch: int, categorical: bool
) -> None:
    x, y = _data(seed, 3_000, categories, missing)
    model = HistGradientBoostingClassifier(
        max_iter=30,
        max_leaf_nodes=leaves,
        categorical_features=[2, 3] if categorical else None,
        min_samples_leaf=5,
        random_state=seed,
    ).fit(x, y)
    new, _ = _data(seed + 1, batch, min(categories + 3, 255), missing)  # codes never seen: unknown categories
    trees = _CompiledTrees(model)
    _, feature, threshold, *_, is_leaf, _, cat_row, _ = trees.arrays
    splits = np.flatnonzero(~is_leaf & (cat_row < 0))  # numeric splits: a value on the threshold goes left
    if splits.size:
        picked = splits[np.random.default_rng(seed).integers(0, splits.size, batch)]
        new[np.arange(batch), trees.input_columns()[feature[picked]]] = threshold[picked]
    _same_bits(trees.raw(trees.recode(new)), model.decision_function(new))


def test_each_word_of_a_categorical_split_sends_its_categories_left() -> None:
    """One split on one categorical column: category c goes left when ``c % 3 == 0`` (codes 0..254, so every
    one of the four 64-bit words holds some), a missing value goes right."""
    left_of = np.array([c % 3 == 0 for c in range(256)])
    trees = Trees(
        roots=np.array([0]),
        feature=np.array([0, 0, 0]),
        threshold=np.zeros(3),
        left=np.array([1, 1, 2]),
        right=np.array([2, 1, 2]),
        missing_left=np.array([False, False, False]),
        is_leaf=np.array([False, True, True]),
        value=np.array([0.0, -1.0, 1.0]),
        cover=np.ones(3),
        cat_row=np.array([0, -1, -1]),
        cat_table=left_of.reshape(1, 256),
    )
    codes = np.append(np.arange(255, dtype=np.float64), np.nan).reshape(-1, 1)
    want = np.append(np.where(left_of[:255], -1.0, 1.0), 1.0) + 0.5
    _same_bits(raw_scores(codes, walk_table(trees), 0.5), want)


def test_the_packed_table_keeps_every_decision_of_the_flat_arrays() -> None:
    x, y = _data(3, 600, 12, 0.1)
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features=[2, 3], random_state=0).fit(x, y)
    arrays = _CompiledTrees(model).arrays
    roots, feature, threshold, left, right, missing_left, is_leaf, value, cat_row, cat_table = arrays
    table = walk_table(_CompiledTrees(model).shap_trees())
    assert (table.flags & LEAF > 0).tolist() == is_leaf.tolist()
    assert (table.flags & MISSING_LEFT > 0).tolist() == missing_left.tolist()
    assert (table.flags & CATEGORICAL > 0).tolist() == (cat_row >= 0).tolist()
    _same_bits(table.threshold_or_value, np.where(is_leaf, value, threshold))
    for node in np.flatnonzero(cat_row >= 0):  # each categorical split's 256 flags, as bits
        words = table.goes_left[table.bitset_row[node]]
        bits = [(int(words[c // 64]) >> (c % 64)) & 1 for c in range(256)]
        assert bits == cat_table[cat_row[node]].astype(int).tolist()
    assert table.roots.tolist() == roots.tolist() and table.left.tolist() == left.tolist()
    assert table.feature.tolist() == feature.tolist() and table.right.tolist() == right.tolist()


def test_an_empty_batch_gives_no_scores() -> None:
    x, y = _data(4, 300, 5, 0.0)
    model = HistGradientBoostingClassifier(max_iter=3, categorical_features=[2, 3], random_state=0).fit(x, y)
    trees = _CompiledTrees(model)
    assert raw_scores(np.empty((0, 4)), walk_table(trees.shap_trees()), trees.baseline).shape == (0,)


def test_trees_with_more_nodes_than_32_bit_indexes_number_are_refused() -> None:
    small = np.zeros(1, dtype=np.int64)
    fine = Trees(small, small, small, small, small, small, small, small, small, small, np.zeros((1, 256), bool))
    huge = np.broadcast_to(np.int64(0), (2**31 + 1,))  # the length is all that is read: no memory taken
    with pytest.raises(ValueError, match="more than a 32-bit node index can number"):
        walk_table(fine._replace(feature=huge))
    assert walk_table(fine).roots.dtype == np.int32
