# Platt scaling (Platt, "Probabilistic outputs for support vector machines", 1999): a
# logistic regression on the model's logit, one per class; fitted here against the *given*
# labels of the known cells, the only labels a run has (labelfix's choice, docs/cleaning.md).
"""Calibration: per class of held-out probabilities, for the report's estimated precision;
per class and direction of change of the issue scores, against the reviewer's decisions;
and the reviewer's decisions as the judge of how many of the next suggestions are right.

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
# how much of the precision the scores promise the reviewer confirms, over all decisions,
# per direction of change shrunk towards that, and per class shrunk towards its direction
# (a three-level empirical-Bayes estimate).

#: pseudo-decisions that agree with the level above: a direction's weight moves away from
#: the pooled ratio, and a class's away from its direction's, only as the reviewer's
#: decisions accumulate. Chosen on the demo's round-1 run (seed 0; 0.940 over the top 300
#: against 0.930 / 0.923 for 5 / 20, benchmarks/review_loop.py); reported on the other runs there.
DECISION_PRIOR = 50.0


def decision_weights(score, is_add, accepted, classes, n_classes: int, *,
                     prior: float = DECISION_PRIOR, class_prior: float | None = None) -> np.ndarray:
    """float64 (K, 2): score weights per class for (removals, additions), learned from the
    decided suggestions.

    Over all decided suggestions, r = (accepted + prior) / (promised + prior), with
    promised the sum of their scores: the precision the reviewer measured over the one the
    scores promised. For each direction d, r_d = (accepted_d + prior r) / (promised_d +
    prior): the same ratio on d's decisions, shrunk towards r (a direction with few
    decisions gets about r, not 1: shrunk towards 1, six right additions outranked a
    hundred removals measured at 0.77 of their promise, and every addition below them).
    For class k, r_kd = (accepted_kd + prior r_d) / (promised_kd + prior), shrunk towards
    r_d (a class with no decision gets r_d). The weights are r_kd / max(r_kd): the most
    reliable (class, direction) keeps its scores, the others are scaled down; within one
    (class, direction) the order never changes.

    Args:
        score: float (n,) issue scores in [0, 1] of the decided suggestions.
        is_add: bool (n,) True for an addition (given 0 or unknown -> 1), False for a removal.
        accepted: bool (n,) the reviewer's decision.
        classes: int (n,) class index of each suggestion, in [0, n_classes).
        n_classes: K.
        prior: pseudo-decisions of a direction (:data:`DECISION_PRIOR`).
        class_prior: pseudo-decisions of a class within a direction (None: ``prior``;
            ``inf``: one weight per direction, every class alike).
    """
    score = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    add = np.asarray(is_add, dtype=bool).astype(np.int64)
    ok = np.asarray(accepted, dtype=bool).astype(np.float64)
    cls = np.asarray(classes, dtype=np.int64)
    cell = cls * 2 + add   # (class, direction) -> flat index
    accepted_kd = np.bincount(cell, weights=ok, minlength=2 * n_classes).reshape(n_classes, 2)
    promised_kd = np.bincount(cell, weights=score, minlength=2 * n_classes).reshape(n_classes, 2)
    r_all = (accepted_kd.sum() + prior) / (promised_kd.sum() + prior)
    r_d = (accepted_kd.sum(0) + prior * r_all) / (promised_kd.sum(0) + prior)
    c = prior if class_prior is None else float(class_prior)
    r = np.broadcast_to(r_d, (n_classes, 2)) if np.isinf(c) else (accepted_kd + c * r_d) / (promised_kd + c)
    return r / r.max()


def reweight_scores(score, given, weights, classes=None) -> np.ndarray:
    """float32 issue scores with :func:`decision_weights` (K, 2) applied: a given positive
    (a removal if suggested) gets its class's removal weight, a given negative or unknown
    cell (an addition) its class's addition weight.

    ``score`` and ``given`` (int8 1 / 0 / -1) are either a block of rows (n, K), the class
    being the column, or 1-D (n,) suggestions with ``classes`` (n,) their class indices."""
    w = np.asarray(weights, dtype=np.float64)
    k = slice(None) if classes is None else np.asarray(classes, dtype=np.int64)
    out = np.where(np.asarray(given) == 1, w[k, 0], w[k, 1]) * np.asarray(score, dtype=np.float64)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- precision from decisions
# A logistic regression of the reviewer's decisions on the suggestions' scores (Platt scaling
# again, now against the person's answers instead of the noisy given labels). Replayed over 93
# batches of 100 on 31 runs (benchmarks/precision_estimate.py, 2026-12-07) it estimated the
# precision of the next batch with a mean absolute error of 0.062, against 0.128 for the
# estimate from the given labels and 0.085 for the share accepted so far (0.070 / 0.130 /
# 0.094 after 100 decisions, 0.057 / 0.123 / 0.077 after 300).

#: fewer decided suggestions than this give no estimate
MIN_DECISIONS = 20


def decision_precision_model(score, is_add, accepted):
    """Fit P(accepted | suggestion) to the decided suggestions: a logistic regression on
    the logit of the issue score and the direction (sklearn, C = 1). Returns a function
    ``(score, is_add) -> float64 probabilities``, or None with fewer than
    :data:`MIN_DECISIONS` decisions. When every decision agrees (all accepted or all
    rejected) the estimate is the smoothed share (accepted + 1) / (n + 2) for every
    suggestion.

    Args:
        score: float (n,) issue scores in [0, 1] of the decided suggestions (as ranked
            when they were decided or now; the same kind as those to predict).
        is_add: bool (n,) True for an addition.
        accepted: bool (n,) the reviewer's decision.
    """
    from sklearn.linear_model import LogisticRegression

    score = np.asarray(score, dtype=np.float64)
    ok = np.asarray(accepted, dtype=bool)
    if ok.size < MIN_DECISIONS:
        return None

    def features(s, add):
        return np.c_[logit(np.clip(np.asarray(s, dtype=np.float64), 1e-6, 1 - 1e-6)), np.asarray(add, dtype=float)]

    if ok.all() or not ok.any():
        share = (ok.sum() + 1.0) / (ok.size + 2.0)
        return lambda s, add: np.full(np.shape(s), share, dtype=np.float64)
    model = LogisticRegression(C=1.0).fit(features(score, is_add), ok)
    return lambda s, add: model.predict_proba(features(s, add))[:, 1]
