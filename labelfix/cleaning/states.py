# BalanceMix (Song, Kim & Lee, AAAI 2024), "Label-wise management": every known cell is
# clean (p_G > 0.5), re-labeled (not clean and the two-view mean probability
# c = (f(aug1 x) + f(aug2 x)) / 2 is > delta -> 1 or < 1 - delta -> 0) or ambiguous
# (keeps its label with BCE weight p_G). delta = 0.975 with multiple positives per image,
# 0.55 in the single-positive setting. Unknown cells are "estimated" (labelfix).
"""Per-cell label states and training targets / weights."""

from __future__ import annotations

import numpy as np

from labelfix.errors import LabelfixError
from labelfix.labels import POS, UNK, positive_only
from labelfix.numeric import chunk_rows as _rows_per_chunk

CLEAN, RELABELED, AMBIGUOUS, ESTIMATED = 0, 1, 2, 3
STATE_NAMES = {CLEAN: "clean", RELABELED: "re-labeled", AMBIGUOUS: "ambiguous", ESTIMATED: "estimated"}

DELTA_MULTI = 0.975
DELTA_SINGLE_POSITIVE = 0.55


def is_single_positive(given, *, min_unknown_fraction: float = 0.5, chunk_rows: int | None = None) -> bool:
    """True when every image has at most one positive and more than
    ``min_unknown_fraction`` of all cells are unknown (the single-positive setting)."""
    n, k = given.shape
    rows = chunk_rows or _rows_per_chunk(k)
    unknown = 0
    for a in range(0, n, rows):
        g = np.asarray(given[a:a + rows])
        if ((g == POS).sum(1) > 1).any():
            return False
        unknown += int((g == UNK).sum())
    return n * k > 0 and unknown > min_unknown_fraction * n * k


def trusted_cells(given, verified, rows=None) -> np.ndarray:
    """bool (N, K): cells no label management may call wrong: those a reviewer
    ``verified`` (bool (N, K)) and, when the labels of ``rows`` (default: all) are
    positive-only (:func:`labelfix.labels.positive_only`: single-positive labels, also
    after a review added positives), every given positive, which is then the only
    supervision and is taken as verified (docs/cleaning.md). ``find_label_issues``
    applies the same rule chunk by chunk."""
    given = np.asarray(given)
    out = np.array(verified, dtype=bool, copy=True)
    if positive_only(given, rows):
        out |= given == POS
    return out


def default_delta(given, *, chunk_rows: int | None = None) -> float:
    """BalanceMix's re-labeling threshold: 0.55 in the single-positive setting (positive-only
    labels, :func:`labelfix.labels.positive_only`), else 0.975."""
    return delta_for(positive_only(given, chunk_rows=chunk_rows))


def delta_for(single_positive: bool) -> float:
    """:func:`default_delta` for callers that have applied the positive-only rule already."""
    return DELTA_SINGLE_POSITIVE if single_positive else DELTA_MULTI


def assign_states_block(given, p_clean, two_view=None, *, clean_threshold: float = 0.5,
                        delta: float = DELTA_MULTI):
    """In-memory core of :func:`assign_states` for one block of rows (same arguments)."""
    g = np.asarray(given)
    p = np.asarray(p_clean, dtype=np.float32)
    known = g != UNK
    # a known cell without a posterior (NaN) has no evidence against it: clean
    clean = known & ~(np.nan_to_num(p, nan=1.0) <= clean_threshold)
    state = np.full(g.shape, ESTIMATED, dtype=np.int8)
    state[known] = AMBIGUOUS
    state[clean] = CLEAN
    target = g.astype(np.int8, copy=True)
    weight = np.zeros(g.shape, dtype=np.float32)
    weight[known] = p[known]
    weight[clean] = 1.0
    if two_view is not None:
        c = np.asarray(two_view, dtype=np.float32)
        cand = known & ~clean
        with np.errstate(invalid="ignore"):
            up = cand & (c > delta)
            down = cand & (c < 1.0 - delta)
        state[up | down] = RELABELED
        target[up] = 1
        target[down] = 0
        weight[up | down] = 1.0
    return state, target, weight


def assign_states(given, p_clean, two_view=None, *, clean_threshold: float = 0.5, delta: float = DELTA_MULTI,
                  chunk_rows: int | None = None, out: tuple | None = None):
    """Label state, training target and loss weight of every cell.

    Args:
        given: int8 (N, K), 1 / 0 / -1.
        p_clean: float (N, K), GMM posterior p_G of the clean component (NaN on unknown
            cells; NaN on a known cell is treated as clean).
        two_view: float (N, K) two-view mean probability c, or None (no re-labeling).
            NaN cells are not re-labeled.
        clean_threshold: a known cell is clean when p_clean > clean_threshold.
        delta: re-labeling threshold: non-clean cells with c > delta -> 1,
            c < 1 - delta -> 0 (may equal the given label; the state is still re-labeled).
        out: optional (state, target, weight) arrays/memmaps to fill.

    Returns:
        state int8 (N, K): CLEAN / RELABELED / AMBIGUOUS / ESTIMATED (unknown cells);
        target int8 (N, K): the re-labeled value, else the given label (-1 stays -1);
        weight float32 (N, K): 1 for clean and re-labeled, p_G for ambiguous, 0 for unknown.
    """
    if not 0.5 <= delta < 1.0:
        raise LabelfixError(f"states: delta: {delta}: must be in [0.5, 1)")
    n, k = given.shape
    for name, arr in (("p_clean", p_clean), ("two_view", two_view)):
        if arr is not None and tuple(arr.shape) != (n, k):
            raise LabelfixError(f"{name}: shape {tuple(arr.shape)}: does not match given {(n, k)}")
    if out is None:
        out = (np.empty((n, k), np.int8), np.empty((n, k), np.int8), np.empty((n, k), np.float32))
    rows = chunk_rows or _rows_per_chunk(k)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        s, t, w = assign_states_block(given[a:b], p_clean[a:b], None if two_view is None else two_view[a:b],
                                      clean_threshold=clean_threshold, delta=delta)
        out[0][a:b], out[1][a:b], out[2][a:b] = s, t, w
    return out
