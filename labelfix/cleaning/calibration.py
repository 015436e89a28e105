# Platt scaling (Platt, "Probabilistic outputs for support vector machines", 1999): a
# logistic regression on the model's logit, one per class; fitted here against the *given*
# labels of the known cells, the only labels a run has (labelfix's choice, docs/cleaning.md).
"""Calibration: per class of held-out probabilities, for the report's estimated precision;
per direction of change of the issue scores, against the reviewer's decisions.

A cross-fitted model's held-out probabilities are far too confident to read as the
chance that a suggestion is right: on the demo data the top 300 suggestions' mean
probability of the suggested label was 0.99 while 0.77-0.87 of them were right. Platt
scaling per class against the given labels maps the logit z of class k to
sigmoid(a_k z + b_k). The given labels are noisy, so it learns how often a labeller
agrees with the model at each confidence: still optimistic for the suggestions
(measured in docs/cleaning.md), much less than the raw probability.
"""

from __future__ import annotations

import numpy as np

from labelfix.labels import UNK
from labelfix.numeric import logit, sigmoid

#: known cells per class used for the fit (a seeded sample above it)
MAX_CELLS = 50_000


def fit_platt(probs, given, *, max_cells: int = MAX_CELLS, seed: int = 0) -> np.ndarray:
    """float64 (K, 2): slope a_k and intercept b_k per class.

    Args:
        probs: float (N, K) held-out probabilities (NaN rows: images not scored).
        given: int8 (N, K) given labels 1 / 0 / -1; unknown cells are not used.
        max_cells: per class, fit on at most this many known cells (seeded sample).
    A class whose known cells all carry one label (or has none) keeps the identity (1, 0).
    """
    from sklearn.linear_model import LogisticRegression

    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given)
    rng = np.random.default_rng(seed)
    params = np.tile([1.0, 0.0], (given.shape[1], 1))
    for k in range(given.shape[1]):
        cells = np.flatnonzero((given[:, k] != UNK) & np.isfinite(probs[:, k]))
        if cells.size > max_cells:
            cells = np.sort(rng.choice(cells, max_cells, replace=False))
        y = given[cells, k] == 1
        if cells.size < 2 or y.all() or not y.any():
            continue
        z = logit(np.clip(probs[cells, k], 1e-7, 1 - 1e-7))[:, None]
        fit = LogisticRegression(C=1e4).fit(z, y)
        params[k] = fit.coef_[0, 0], fit.intercept_[0]
    return params


def apply_platt(probs, columns, params: np.ndarray) -> np.ndarray:
    """float64 calibrated probabilities: ``probs[j]`` of class ``columns[j]`` mapped by
    that class's (a, b) of :func:`fit_platt` (NaN stays NaN)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    a, b = params[np.asarray(columns, dtype=np.int64)].T
    return sigmoid(a * logit(p) + b)


# --------------------------------------------------------------------------- reviewer's decisions
# labelfix's own rule (docs/review.md, "Learning from your decisions"): a ratio estimator of
# how much of the precision the scores promise the reviewer confirms, per direction of change.

#: pseudo-decisions per direction that agree with the scores: the weight of a direction
#: moves away from 1 only as the reviewer's decisions accumulate. Chosen on the demo's
#: round-1 run (seed 0; any value from 1 to 50 gave 0.83 to 0.84 over the top 300,
#: benchmarks/review_loop.py); reported on the other runs there.
DECISION_PRIOR = 20.0


def direction_weights(score, is_add, accepted, *, prior: float = DECISION_PRIOR) -> np.ndarray:
    """float64 (2,): score weights (removals, additions) learned from decided suggestions.

    For each direction d, r_d = (accepted_d + prior) / (sum of the scores of d's decided
    suggestions + prior): the precision the reviewer measured over the precision the scores
    promised, shrunk towards 1 by ``prior`` pseudo-decisions that agree with the scores. The
    weights are r / max(r), so the more reliable direction keeps its scores and the other's
    are scaled down; within a direction the order never changes.

    Args:
        score: float (n,) issue scores in [0, 1] of the decided suggestions.
        is_add: bool (n,) True for an addition (given 0 or unknown -> 1), False for a removal.
        accepted: bool (n,) the reviewer's decision.
        prior: pseudo-decisions per direction (:data:`DECISION_PRIOR`).
    """
    score = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    is_add = np.asarray(is_add, dtype=bool)
    accepted = np.asarray(accepted, dtype=bool)
    r = np.array([(accepted[is_add == d].sum() + prior) / (score[is_add == d].sum() + prior) for d in (False, True)])
    return r / r.max()


def reweight_scores(score, given, weights) -> np.ndarray:
    """float32 issue scores with :func:`direction_weights` applied per cell: a given
    positive (a removal if suggested) gets ``weights[0]``, a given negative or unknown
    cell (an addition) ``weights[1]``. Shapes as ``score``; ``given`` int8 1 / 0 / -1."""
    w = np.where(np.asarray(given) == 1, weights[0], weights[1])
    return (np.asarray(score, dtype=np.float64) * w).astype(np.float32)
