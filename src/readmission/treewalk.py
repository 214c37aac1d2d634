"""Raw scores of boosted trees: every tree walked over a whole batch of rows, in compiled code without the GIL.

The walk visits one tree at a time and takes every row of the batch through it before the next tree, so a
tree's few dozen nodes are read from the nearest cache while the batch goes through them. Row by row, each
row read every node of the model again: the champion of the UCI file has 27,521 nodes in 949 trees, 3.3 MB
as flat arrays with the categorical splits' 256-byte flag rows, over a core's 1 MB L2 cache here, and its
larger tree set cost 23.5 us per row on 36 distinct rows against 7.9 on 8. The table is packed for the same
reason (0.9 MB): 32-bit node indexes, a threshold and a leaf value sharing one slot, the three per-node flags
in one byte, and each categorical split's 256 flags as four 64-bit words. Scores are summed in the trees'
order from the baseline, as scikit-learn's ``_raw_predict`` does, so they are bit-identical to
``decision_function`` (``tests/test_treewalk.py``). The change in requests per second is measured with
``bench/revisions.py`` (CHANGELOG, issue #24).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

LEAF, MISSING_LEFT, CATEGORICAL = 1, 2, 4  # the bits of ``WalkTable.flags``


class WalkTable(NamedTuple):
    """The nodes of every tree, one entry per node (``roots[t]``: tree t's first node)."""

    roots: np.ndarray  # int32, one per tree
    feature: np.ndarray  # int32: the column of the row a split reads
    split: np.ndarray  # float64: a numeric split's threshold (left when value <= it), a leaf's value
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    flags: np.ndarray  # uint8: LEAF | MISSING_LEFT | CATEGORICAL
    categories: np.ndarray  # int32: a categorical split's row of ``goes_left`` (0 for other nodes)
    goes_left: np.ndarray  # uint64 (splits, 4): bit c set when category c goes left


def walk_table(
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    missing_left: np.ndarray,
    is_leaf: np.ndarray,
    value: np.ndarray,
    cat_row: np.ndarray,
    cat_table: np.ndarray,
) -> WalkTable:
    """The packed table of flat node arrays (``serving._CompiledTrees.arrays``; ``cat_table``: one row of 256
    booleans per categorical split, ``cat_row``: a node's row of it or -1). Raises ValueError when a tree
    has more nodes than a 32-bit index holds."""
    if len(feature) >= 2**31:
        raise ValueError(f"{len(feature):,} nodes: more than a 32-bit node index holds")
    flags = is_leaf * LEAF | missing_left * MISSING_LEFT | (cat_row >= 0) * CATEGORICAL
    words = np.zeros((len(cat_table), 4), dtype=np.uint64)
    for category in range(256):
        words[:, category // 64] |= cat_table[:, category].astype(np.uint64) << np.uint64(category % 64)
    return WalkTable(
        roots.astype(np.int32),
        feature.astype(np.int32),
        np.where(is_leaf, value, threshold).astype(np.float64),
        left.astype(np.int32),
        right.astype(np.int32),
        flags.astype(np.uint8),
        np.maximum(cat_row, 0).astype(np.int32),
        words,
    )


def raw_scores(x: np.ndarray, table: WalkTable, baseline: float) -> np.ndarray:
    """The raw score (``baseline`` plus the leaf value of every tree) of each row of ``x`` (rows x columns,
    float64, NaN for missing; a categorical column holds category indexes 0-255), shape (rows,)."""
    return _walk(np.ascontiguousarray(x, dtype=np.float64), *table, baseline)


@njit(nogil=True, cache=False)
def _walk(
    x: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    split: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    flags: np.ndarray,
    categories: np.ndarray,
    goes_left: np.ndarray,
    baseline: float,
) -> np.ndarray:
    out = np.full(x.shape[0], baseline)
    for t in range(roots.size):
        root = roots[t]
        for i in range(x.shape[0]):
            node = root
            while True:
                kind = flags[node]  # read once: every decision below is a plain bool (numba types it so)
                if kind & LEAF:
                    break
                v = x[i, feature[node]]
                if np.isnan(v):
                    go_left = (kind & MISSING_LEFT) != 0
                elif kind & CATEGORICAL:
                    c = np.uint64(np.uint8(v))
                    word = goes_left[categories[node], c >> np.uint64(6)]
                    go_left = ((word >> (c & np.uint64(63))) & np.uint64(1)) != 0
                else:
                    go_left = v <= split[node]
                node = left[node] if go_left else right[node]
            out[i] += split[node]
    return out
