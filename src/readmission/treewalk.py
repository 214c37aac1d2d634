"""Raw scores of boosted trees: every tree walked over a whole batch of rows, in compiled code without the GIL.

The walk takes every row of the batch through one tree before it goes to the next, so a tree's few dozen
nodes stay in the nearest cache while the batch goes through them. Row by row, each row followed one
root-to-leaf path per tree, and over a batch those paths spread across the whole node table: for the champion
of the UCI file (a chain: P(<30) by 353 trees, 10,237 nodes; P(>30 | not <30) by 596 trees, 17,284 nodes) the
flat arrays with the categorical splits' 256-byte flag rows took 1.2 MB and 2.1 MB, each more than one core's
L2 cache on the 2-core machine the project is measured on (1 MB). The table is packed for the same reason
(0.34 MB and 0.59 MB): 32-bit node indexes, a split's threshold and a leaf's value in one slot, the three
per-node flags in one byte, and a categorical split's 256 flags as four 64-bit words. Scores are summed in
the trees' order from the baseline, as scikit-learn's ``_raw_predict`` does, so they are bit-identical to
``decision_function`` (``tests/test_treewalk.py``). What the change did to requests per second was measured
with ``bench/revisions.py`` (CHANGELOG, issue #24).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from readmission.treeshap import Trees

LEAF, MISSING_LEFT, CATEGORICAL = 1, 2, 4  # the bits of ``WalkTable.flags``


class WalkTable(NamedTuple):
    """The nodes of every tree, one entry per node (node ids global; ``roots[t]``: tree t's first node)."""

    roots: np.ndarray  # int32, one per tree
    feature: np.ndarray  # int32: the column of the row a split reads
    threshold_or_value: np.ndarray  # float64: a numeric split's threshold (left when value <= it); a leaf's value
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    flags: np.ndarray  # uint8: LEAF | MISSING_LEFT | CATEGORICAL
    bitset_row: np.ndarray  # int32: a categorical split's row of ``goes_left`` (0 for other nodes)
    goes_left: np.ndarray  # uint64 (categorical splits, 4): bit c of a row set when category c goes left


def walk_table(trees: Trees) -> WalkTable:
    """The packed table of ``trees`` (``serving._CompiledTrees.shap_trees()``: ``cat_table`` one row of 256
    booleans per categorical split, ``cat_row`` a node's row of it or -1; ``cover`` is not used). Raises
    ValueError when the trees together have more nodes than a 32-bit index can number."""
    if len(trees.feature) > 2**31:
        raise ValueError(f"{len(trees.feature):,} nodes: more than a 32-bit node index can number")
    flags = trees.is_leaf * LEAF | trees.missing_left * MISSING_LEFT | (trees.cat_row >= 0) * CATEGORICAL
    # 256 flags -> 32 bytes, flag c at bit c % 8 of byte c // 8 -> four little-endian words, flag c at bit c % 64.
    words = np.packbits(trees.cat_table.astype(bool), axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return WalkTable(
        trees.roots.astype(np.int32),
        trees.feature.astype(np.int32),
        np.where(trees.is_leaf, trees.value, trees.threshold).astype(np.float64),
        trees.left.astype(np.int32),
        trees.right.astype(np.int32),
        flags.astype(np.uint8),
        np.maximum(trees.cat_row, 0).astype(np.int32),
        words,
    )


def raw_scores(x: np.ndarray, table: WalkTable, baseline: float) -> np.ndarray:
    """The raw score (``baseline`` plus the leaf value of every tree) of each row of ``x``, shape (rows,).

    ``x``: rows x columns, float64, NaN for missing, at least as many columns as the trees read, a categorical
    column holding category indexes 0..254 or NaN, as ``serving._CompiledTrees.recode`` gives (unchecked here:
    the walk runs on every request; another code is outside the table's 256 flags)."""
    return _walk(np.ascontiguousarray(x, dtype=np.float64), *table, baseline)


@njit(nogil=True, cache=False)
def _walk(
    x: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold_or_value: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    flags: np.ndarray,
    bitset_row: np.ndarray,
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
                    word = goes_left[bitset_row[node], c >> np.uint64(6)]
                    go_left = ((word >> (c & np.uint64(63))) & np.uint64(1)) != 0
                else:
                    go_left = v <= threshold_or_value[node]
                node = left[node] if go_left else right[node]
            out[i] += threshold_or_value[node]
    return out
