# Platt scaling (Platt, "Probabilistic outputs for support vector machines", 1999): a
# logistic regression on the model's logit, one per class; fitted here against the *given*
# labels of the known cells, the only labels a run has (labelfix's choice, docs/cleaning.md).
"""Per-class calibration of held-out probabilities, for the report's estimated precision.

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
