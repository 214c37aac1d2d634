"""Exact path-dependent TreeSHAP over flat tree arrays, compiled with numba.

The algorithm is Lundberg, Erion & Lee, "Consistent Individualized Feature Attribution for Tree Ensembles"
(2018), Algorithm 2: for each row and tree it walks every root-to-leaf path once, keeping the proportion of
feature subsets that reach the leaf (the "unique path"), in O(leaves x depth^2) per tree. The value of a
subset S is E[f(x) | x_S] with features outside S averaged by the training samples each node saw (its
cover), the definition `shap.TreeExplainer` uses with ``feature_perturbation="tree_path_dependent"``.

It is ours, not `shap`'s, because the served boosted trees split on categories with bitsets and send
missing values to a learned side, which shap's tree model format cannot express (shap issue 3436); the
decisions here are the serving walk's (``treewalk._walk``, which reads a packed copy of the same arrays),
so explanation and prediction follow the same path (``tests/test_treewalk.py``). ``tests/test_treeshap.py``
checks it against brute-force Shapley values and against shap where shap supports the model.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class Trees(NamedTuple):
    """Trees as flat node arrays (node ids global; ``roots`` the first node of each tree, stored one after
    another; a leaf's ``left`` and ``right`` point at itself). A split sends a row left when its value is
    NaN and ``missing_left``; when ``cat_row >= 0``, when ``cat_table[cat_row, value]``; else when
    ``value <= threshold``. ``cover``: the training samples that reached each node."""

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    cover: np.ndarray
    cat_row: np.ndarray
    cat_table: np.ndarray


@njit(nogil=True, cache=False)
def _goes_left(v: float, node: int, t: Trees) -> bool:
    if np.isnan(v):
        return bool(t.missing_left[node])
    if t.cat_row[node] >= 0:
        return bool(t.cat_table[t.cat_row[node], np.uint8(v)])
    return bool(v <= t.threshold[node])


# The unique path of one depth lives in columns b .. b + depth of ``paths``: row 0 the features, 1 the zero
# fractions, 2 the one fractions, 3 the weights. Indexed directly, never sliced: views cost more than the maths.
_F, _Z, _O, _W = 0, 1, 2, 3


@njit(nogil=True, cache=False)
def _extend(paths: np.ndarray, b: int, depth: int, z: float, o: float, f: int) -> None:
    paths[_F, b + depth], paths[_Z, b + depth], paths[_O, b + depth] = f, z, o
    paths[_W, b + depth] = 1.0 if depth == 0 else 0.0
    for i in range(depth - 1, -1, -1):
        paths[_W, b + i + 1] += o * paths[_W, b + i] * (i + 1) / (depth + 1)
        paths[_W, b + i] = z * paths[_W, b + i] * (depth - i) / (depth + 1)


@njit(nogil=True, cache=False)
def _unwind(paths: np.ndarray, b: int, depth: int, k: int) -> None:
    o, z = paths[_O, b + k], paths[_Z, b + k]
    next_one = paths[_W, b + depth]
    for i in range(depth - 1, -1, -1):
        if o != 0.0:
            saved = paths[_W, b + i]
            paths[_W, b + i] = next_one * (depth + 1) / ((i + 1) * o)
            next_one = saved - paths[_W, b + i] * z * (depth - i) / (depth + 1)
        else:
            paths[_W, b + i] = paths[_W, b + i] * (depth + 1) / (z * (depth - i))
    for i in range(k, depth):
        for row in range(3):  # features and fractions move down; the weights were recomputed above
            paths[row, b + i] = paths[row, b + i + 1]


@njit(nogil=True, cache=False)
def _unwound_sum(paths: np.ndarray, b: int, depth: int, k: int) -> float:
    o, z = paths[_O, b + k], paths[_Z, b + k]
    next_one = paths[_W, b + depth]
    total = 0.0
    for i in range(depth - 1, -1, -1):
        if o != 0.0:
            part = next_one * (depth + 1) / ((i + 1) * o)
            total += part
            next_one = paths[_W, b + i] - part * z * (depth - i) / (depth + 1)
        elif z != 0.0:
            total += (paths[_W, b + i] / z) / ((depth - i) / (depth + 1))
    return total


@njit(nogil=True, cache=False)
def _recurse(
    x: np.ndarray,
    phi: np.ndarray,
    node: int,
    t: Trees,
    paths: np.ndarray,
    parent: int,
    depth: int,
    z: float,
    o: float,
    f: int,
) -> None:
    """Add the contributions of the leaves under ``node`` to ``phi``. The parent's path starts at column
    ``parent`` of ``paths``; this node's copy is written right after it (so each depth keeps its own), with
    the new element at ``depth``."""
    here = parent + depth + 1
    for i in range(depth + 1):
        for row in range(4):
            paths[row, here + i] = paths[row, parent + i]
    _extend(paths, here, depth, z, o, f)
    if t.is_leaf[node]:
        for i in range(1, depth + 1):
            share = _unwound_sum(paths, here, depth, i) * (paths[_O, here + i] - paths[_Z, here + i])
            phi[np.int64(paths[_F, here + i])] += share * t.value[node]
        return
    split = t.feature[node]
    hot = t.left[node] if _goes_left(x[split], node, t) else t.right[node]
    cold = t.right[node] if hot == t.left[node] else t.left[node]
    incoming_zero, incoming_one = 1.0, 1.0
    k = 1
    while k <= depth and np.int64(paths[_F, here + k]) != split:
        k += 1
    if k <= depth:  # the feature split before on this path: undo that split, redo it here
        incoming_zero, incoming_one = paths[_Z, here + k], paths[_O, here + k]
        _unwind(paths, here, depth, k)
        depth -= 1
    share = incoming_zero / t.cover[node]
    _recurse(x, phi, hot, t, paths, here, depth + 1, share * t.cover[hot], incoming_one, split)
    _recurse(x, phi, cold, t, paths, here, depth + 1, share * t.cover[cold], 0.0, split)


@njit(nogil=True, cache=False)
def _shap_rows(x: np.ndarray, t: Trees, width: int) -> np.ndarray:
    phi = np.zeros((x.shape[0], x.shape[1]), dtype=np.float64)
    paths = np.zeros((4, width), dtype=np.float64)
    for i in range(x.shape[0]):
        for root in t.roots:
            _recurse(x[i], phi[i], root, t, paths, 0, 0, 1.0, 1.0, -1)
    return phi


def tree_depth(trees: Trees) -> int:
    """The largest number of splits from a root to a leaf."""
    deepest = 0
    for root in trees.roots.tolist():
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if trees.is_leaf[node]:
                deepest = max(deepest, depth)
            else:
                stack.extend(((int(trees.left[node]), depth + 1), (int(trees.right[node]), depth + 1)))
    return deepest


def expected_value(trees: Trees) -> float:
    """Sum over trees of the training-cover-weighted mean of their leaf values: E[f(X)] in path-dependent
    TreeSHAP, the base value the contributions start from."""
    tree_of = np.searchsorted(trees.roots, np.arange(len(trees.value)), side="right") - 1
    leaves = np.flatnonzero(trees.is_leaf)
    cover = trees.cover
    return float(np.sum(trees.value[leaves] * cover[leaves] / cover[trees.roots[tree_of[leaves]]]))


def path_width(trees: Trees) -> int:
    """Columns of the work area ``tree_shap`` needs: every depth's copy of the path, side by side. Worth
    computing once per model: the walk is in Python (a few ms for hundreds of trees)."""
    depth = tree_depth(trees)
    return (depth + 2) * (depth + 3) // 2 + depth + 4


def tree_shap(x: np.ndarray, trees: Trees, width: int | None = None) -> np.ndarray:
    """SHAP values, shape (rows, columns of ``x``), of the sum of the trees' leaf values: each row's values
    add up to (its sum of leaf values) - ``expected_value(trees)``. ``width``: ``path_width(trees)``, computed
    here when not given."""
    width = path_width(trees) if width is None else width
    data = np.ascontiguousarray(x, dtype=np.float64)
    result: np.ndarray = _shap_rows(data, trees, width)
    return result
