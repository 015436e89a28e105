# Issue scores for label cleaning (labelfix). The GMM posterior p_G is BalanceMix's
# label-wise management (Song, Kim & Lee, AAAI 2024); the disagreement score |y - p| is
# the self-confidence of confident learning (Northcutt et al., JAIR 2021, cleanlab's
# "self_confidence" rank), here per cell; the combination is labelfix's.
"""Per-cell issue scores in [0, 1]: higher = more likely that the given label is wrong
(known cells) or that the unknown cell is positive.

Every scorer has the same signature and is array-in / array-out on one block of rows
(so callers apply it chunk by chunk to memory-mapped inputs)::

    scorer(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
           neighbours=None, noise_rates=None, known_error_rate=None)
        -> float32 array, same shape as ``given``: the score in [0, 1], NaN where the rule
           has no value for a cell (a NaN in its input); :func:`find_label_issues` scores
           those 0 and counts them (``settings["unranked_cells"]``)

A scorer registered with ``needs_noise_rates=True`` gets ``noise_rates``, float (K, 2)
per-class noise rates that :func:`find_label_issues` estimates over all rows first
(``labelfix.cleaning.noise_rates``); one registered with ``needs_known_error_rate=True``
gets ``known_error_rate``, the pooled share of wrong known labels, where known and
unknown cells rank together (else None).

For unknown cells every scorer returns the model's positive estimate: the two-view
probability where finite, else the model probability. ``estimates`` (ROLE's label
estimator) are accepted but not used for the score: on the benchmark the model
probability of the ROLE run ranked the missing positives better than ROLE's own table
(unknown-cell AP 0.291 / 0.243 against 0.246 / 0.220 over two seeds, docs/cleaning.md);
the table still decides the suggested value of unknown cells (``unknown_estimate``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from labelfix.errors import LabelfixError
from labelfix.labels import UNK
from labelfix.numeric import bce_logits, bce_probs

Scorer = Callable[..., np.ndarray]
_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, *, needs_noise_rates: bool = False, needs_known_error_rate: bool = False,
                    uses_neighbours: bool = False):
    """Decorator: register ``fn`` as scoring rule ``name``. ``needs_noise_rates``: the caller
    estimates the per-class noise rates over all rows first and passes ``noise_rates``;
    ``needs_known_error_rate``: it passes ``known_error_rate`` when known and unknown cells
    rank together (both present, and the known ones not all trusted: not in
    single-positive data); ``uses_neighbours``: the rule reads ``neighbours`` (the
    neighbours' label votes; a caller need not compute them for the others)."""
    def deco(fn: Scorer) -> Scorer:
        fn.needs_noise_rates = needs_noise_rates
        fn.needs_known_error_rate = needs_known_error_rate or needs_noise_rates
        fn.uses_neighbours = uses_neighbours
        _SCORERS[name] = fn
        return fn
    return deco


def get_scorer(name: str) -> Scorer:
    try:
        return _SCORERS[name]
    except KeyError:
        raise LabelfixError(f"score: {name!r}: unknown scoring rule (choose from {', '.join(list_scorers())})") from None


def list_scorers() -> list[str]:
    return sorted(_SCORERS)


def bce_losses(probs, given, *, logits: bool = False) -> np.ndarray:
    """Per-cell BCE against the given label, unknown cells against 0 (float32).

    ``probs`` are probabilities clipped to [1e-7, 1 - 1e-7] (maximum loss 16.1), or with
    ``logits=True`` logits (exact softplus form, no clipping)."""
    return bce_logits(probs, given) if logits else bce_probs(probs, given)


def _known(given):
    g = np.asarray(given)
    return g, g != UNK, (g == 1).astype(np.float32)


def _finite_or(a, fallback):
    if a is None:
        return np.asarray(fallback, dtype=np.float32)
    a = np.asarray(a, dtype=np.float32)
    return np.where(np.isfinite(a), a, fallback).astype(np.float32)


def unknown_estimate(probs, two_view=None, estimates=None) -> np.ndarray:
    """q_unknown: estimates if given, else two-view where finite, else probs (float32)."""
    q = _finite_or(two_view, probs)
    return _finite_or(estimates, q) if estimates is not None else q


def _finish(known, known_score, probs, two_view) -> np.ndarray:
    q = unknown_estimate(probs, two_view)   # not the estimates: see the module docstring
    out = np.where(known, known_score, q)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@register_scorer("gmm")
def score_gmm(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
              neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: 1 - p_clean (the GMM's noisy-component posterior)."""
    if p_clean is None:
        raise LabelfixError("score: gmm: needs p_clean")
    g, known, _ = _known(given)
    return _finish(known, 1.0 - _finite_or(p_clean, 1.0), probs, two_view)


@register_scorer("disagreement")
def score_disagreement(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
              neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: |y - p|, one minus the model's probability of the given label."""
    g, known, y = _known(given)
    return _finish(known, np.abs(y - np.asarray(probs, dtype=np.float32)), probs, two_view)


@register_scorer("two_view")
def score_two_view(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
              neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: |y - c| with the two-view mean probability c where finite, else p
    (the disagreement with BalanceMix's re-labeling probability)."""
    if two_view is None:   # not a silent fallback to "disagreement"
        raise LabelfixError("score: two_view: needs two_view (stats/two_view.npy, written by BalanceMix runs "
                            "with --balancemix-refine epoch); use --score disagreement otherwise")
    g, known, y = _known(given)
    c = _finite_or(two_view, probs)
    return _finish(known, np.abs(y - c), probs, two_view)


@register_scorer("loss")
def score_loss(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
              neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: 1 - exp(-mean BCE). For one epoch this is |y - p|; for a mean over
    epochs, one minus the geometric mean of the probability given to the label."""
    if losses is None:
        raise LabelfixError("score: loss: needs losses")
    g, known, _ = _known(given)
    return _finish(known, -np.expm1(-np.asarray(losses, dtype=np.float32)), probs, two_view)


@register_scorer("combined")
def score_combined(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
              neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: mean of the GMM noisy posterior 1 - p_clean and the
    disagreement |y - c| (c = two-view probability where finite, else p). p_clean ranks
    cells within a (class, label) group but saturates at 0 / 1; the disagreement breaks
    those ties and is comparable across classes. Without p_clean: the disagreement."""
    g, known, y = _known(given)
    dis = np.abs(y - _finite_or(two_view, probs))
    s = dis if p_clean is None else 0.5 * (1.0 - _finite_or(p_clean, 1.0)) + 0.5 * dis
    return _finish(known, s, probs, two_view)


#: weight of the neighbours' vote in the ``evidence`` estimate (docs/cleaning.md)
NEIGHBOUR_WEIGHT = 0.25


def evidence_estimate(probs, neighbours=None, weight: float = NEIGHBOUR_WEIGHT) -> np.ndarray:
    """float32 estimate of P(positive) per cell: the model probability, mixed with weight
    ``weight`` with the neighbours' vote where one exists (NaN elsewhere)."""
    p = np.asarray(probs, dtype=np.float32)
    if neighbours is None or weight == 0:
        return p
    q = np.asarray(neighbours, dtype=np.float32)
    return np.where(np.isfinite(q), (1.0 - weight) * p + weight * q, p).astype(np.float32)


def unknown_on_known_scale(q, known_error_rate) -> np.ndarray:
    """float32: an unknown cell's P(positive) ``q`` on the scale of the known cells'
    disagreement |y - q|, so that the two rank against each other (labelfix's rule,
    docs/cleaning.md "Known and unknown cells").

    Under a symmetric noise model with rate r (the known cells' pooled error rate), Bayes'
    rule gives a known cell with disagreement d the error posterior with
    odds(d) r / (1 - r); an unknown cell's chance of being a missing positive is q itself.
    Ranking both by their posteriors equals ranking the known cells by d and the unknown
    cells by q with its odds scaled by (1 - r) / r. r is clipped to [1e-6, 0.5]: at 0.5
    (as many wrong labels as right) q is used as it is. ``known_error_rate=None``: q."""
    q = np.asarray(q, dtype=np.float32)
    if known_error_rate is None:
        return q
    r = float(np.clip(known_error_rate, 1e-6, 0.5))
    m = (1.0 - r) / r
    with np.errstate(invalid="ignore"):
        return (q * m / (q * m + (1.0 - q))).astype(np.float32)


@register_scorer("evidence", needs_known_error_rate=True, uses_neighbours=True)
def score_evidence(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
                   neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: |y - q|, unknown cells: q on the same scale
    (:func:`unknown_on_known_scale`, given the known cells' pooled error rate), with q the
    held-out model probability mixed with the neighbours' label vote
    (:func:`evidence_estimate`). Fully labelled data: exactly |y - q|."""
    g, known, y = _known(given)
    q = evidence_estimate(probs, neighbours)
    out = np.where(known, np.abs(y - q), unknown_on_known_scale(q, known_error_rate))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


#: share of a cell's ``evidence`` score taken away when the label GMMs call it clean
#: (``evidence_gmm``; docs/cleaning.md)
CLEAN_DISCOUNT = 0.5


@register_scorer("evidence_gmm", needs_known_error_rate=True, uses_neighbours=True)
def score_evidence_gmm(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
                       neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: ``evidence`` x (1 - CLEAN_DISCOUNT p_clean), unknown cells: as in
    ``evidence``. With
    p_clean the label GMMs' clean posterior (BalanceMix's label-wise management; in a
    cross-fitted run fitted on round 1's held-out losses, so a second judge beside the
    last round's q), a cell both call wrong ranks first. It assumes what the GMMs assume,
    that the wrong labels are the minority of each (class, given label) group: it ranked
    better under mislabel noise and worse under symmetric flips (docs/cleaning.md)."""
    if p_clean is None:
        raise LabelfixError("score: evidence_gmm: needs p_clean")
    g, known, _ = _known(given)
    out = score_evidence(given, probs=probs, neighbours=neighbours, known_error_rate=known_error_rate)
    discounted = out * (1.0 - CLEAN_DISCOUNT * _finite_or(p_clean, 1.0))
    return np.where(known, discounted, out).astype(np.float32)


@register_scorer("posterior", needs_noise_rates=True, uses_neighbours=True)
def score_posterior(given, *, probs, p_clean=None, two_view=None, losses=None, estimates=None,
                    neighbours=None, noise_rates=None, known_error_rate=None) -> np.ndarray:
    """Known cells: the posterior P(true label != given label) under confident learning's
    per-class noise rates (``labelfix.cleaning.noise_rates.error_posterior``), with q the
    ``evidence`` estimate as P(positive); unknown cells: q. A cell of a class whose given
    labels look clean (few confidently wrong cells) ranks below an equally doubtful cell
    of a noisy class: flagging is more precise when the noise sits in some classes or one
    direction (e.g. missing labels; docs/cleaning.md), at some cost in AP under symmetric
    flips."""
    from labelfix.cleaning.noise_rates import error_posterior

    if noise_rates is None:
        raise LabelfixError("score: posterior: needs noise_rates (find_label_issues estimates them)")
    return error_posterior(given, evidence_estimate(probs, neighbours), noise_rates)


# chosen on the demo data, seed 0, cross-fitted masked-BCE runs (3 folds x 2 rounds):
# held-out AP of label errors, evidence / disagreement / loss over epochs: mislabel 40 %
# 0.571 / 0.574 / 0.483, flip 20 % 0.729 / 0.688 / 0.724, missing 50 % 0.726 / 0.714 /
# 0.696 (docs/cleaning.md; reported on other seeds and data in docs/benchmarks.md)
DEFAULT_SCORER = "evidence"
