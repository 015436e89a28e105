# Confident learning's confident joint and noise matrix (Northcutt, Jiang & Chuang, "Confident
# learning: estimating uncertainty in dataset labels", JAIR 2021, Sec. 3.1, Eq. 1-3), here one
# binary problem per class on the known cells; the per-cell posterior of an error is Bayes'
# rule under that class-conditional noise model (labelfix's ``posterior`` score).
"""Per-class noise rates of the given labels, estimated from held-out probabilities.

For class k, a known cell with given label y~ in {0, 1} and estimate q = P(positive) is
*confidently* positive when q >= t1 (t1 = mean q over the class's given positives) and
confidently negative when q <= t0 (t0 = mean q over its given negatives; cleanlab's
threshold on 1 - q). A cell confident of both takes the more probable side, as in cleanlab.
Counting them gives the confident joint C[k, y~, y*] (int64 (K, 2, 2); its diagonal is at
least 1, as in cleanlab). Calibrated to the given-label counts n[y~] (Eq. 2) it gives the
noise matrix P(y~ | y*) per class, :func:`noise_rates`.

Arrays are row-sliceable and read chunk by chunk, so memory-mapped (N, K) inputs work.
"""

from __future__ import annotations

import numpy as np

from labelfix.labels import UNK

#: pseudo-count added to each off-diagonal cell of the confident joint before the noise
#: rates are read off (labelfix's choice, docs/cleaning.md): a class whose confident joint
#: has no off-diagonal count keeps a small noise rate, so its cells stay ranked by q
#: instead of all scoring 0
SMOOTHING = 0.5


def confident_joint(given, q, *, chunk_rows: int = 65_536) -> np.ndarray:
    """int64 (K, 2, 2) confident joint per class, indexed [class, given label, true label].

    Args:
        given: int8 (N, K) labels 1 / 0 / -1 (unknown cells are not counted).
        q: float (N, K) estimate of P(positive) per cell (NaN: not counted).
        chunk_rows: rows read at a time.
    Equals ``cleanlab.count.compute_confident_joint(y~, [1 - q, q], calibrate=False)`` per
    class on the known cells (tests/test_cleaning.py).
    """
    n, k = given.shape
    sums = np.zeros((2, k))
    counts = np.zeros((2, k))
    for a in range(0, n, chunk_rows):   # pass 1: per-class thresholds t0, t1
        g = np.asarray(given[a:a + chunk_rows])
        p = np.asarray(q[a:a + chunk_rows], dtype=np.float64)
        for label in (0, 1):
            m = (g == label) & np.isfinite(p)
            sums[label] += np.where(m, p, 0.0).sum(0)
            counts[label] += m.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t0, t1 = sums / counts   # NaN where a class has no given label of that value
    joint = np.zeros((k, 2, 2), dtype=np.int64)
    for a in range(0, n, chunk_rows):   # pass 2: count the confident cells
        g = np.asarray(given[a:a + chunk_rows])
        p = np.asarray(q[a:a + chunk_rows], dtype=np.float64)
        pos = p >= t1 - 1e-6
        neg = 1.0 - p >= (1.0 - t0) - 1e-6
        true = np.where(pos & neg, (p > 0.5).astype(np.int8), np.where(pos, 1, 0))
        judged = (g != UNK) & np.isfinite(p) & (pos | neg)
        for label in (0, 1):
            for t in (0, 1):
                joint[:, label, t] += (judged & (g == label) & (true == t)).sum(0)
    joint[:, 0, 0] = np.maximum(joint[:, 0, 0], 1)
    joint[:, 1, 1] = np.maximum(joint[:, 1, 1], 1)
    return joint


def _calibrated(joint, given_counts, smoothing: float) -> np.ndarray:
    """float64 (K, 2, 2): the joint with ``smoothing`` on its off-diagonal counts, each row
    scaled to the class's given-label count (JAIR 2021 Eq. 2)."""
    c = np.asarray(joint, dtype=np.float64).copy()
    c[:, 0, 1] += smoothing
    c[:, 1, 0] += smoothing
    return c / c.sum(2, keepdims=True) * np.asarray(given_counts, dtype=np.float64)[:, :, None]


def noise_rates(joint: np.ndarray, given_counts: np.ndarray, *, smoothing: float = SMOOTHING) -> np.ndarray:
    """float64 (K, 2): per class rho0 = P(y~ = 1 | y* = 0) and rho1 = P(y~ = 0 | y* = 1).

    Args:
        joint: int (K, 2, 2) :func:`confident_joint`.
        given_counts: int (K, 2) known cells per class with given label 0 and 1.
        smoothing: pseudo-count added to the off-diagonal counts (:data:`SMOOTHING`).
    The joint's rows are calibrated to the given-label counts (JAIR 2021 Eq. 2); a class
    without given positives (or negatives) gets rates 0 on that side.
    """
    calibrated = _calibrated(joint, given_counts, smoothing)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho0 = calibrated[:, 1, 0] / (calibrated[:, 0, 0] + calibrated[:, 1, 0])
        rho1 = calibrated[:, 0, 1] / (calibrated[:, 0, 1] + calibrated[:, 1, 1])
    return np.nan_to_num(np.stack([rho0, rho1], axis=1), nan=0.0)


def known_error_rate(joint: np.ndarray, given_counts: np.ndarray, *, smoothing: float = SMOOTHING) -> float:
    """The share of the known cells whose given label is wrong, pooled over classes: the
    off-diagonal mass of the calibrated confident joint (JAIR 2021 Eq. 2, with the same
    ``smoothing`` as :func:`noise_rates`) over the number of known cells; 0.0 without any.

    Args:
        joint: int (K, 2, 2) :func:`confident_joint`.
        given_counts: int (K, 2) :func:`given_counts`.
    """
    calibrated = _calibrated(joint, given_counts, smoothing)
    total = float(np.asarray(given_counts, dtype=np.float64).sum())
    return float((calibrated[:, 0, 1].sum() + calibrated[:, 1, 0].sum()) / total) if total > 0 else 0.0


def given_counts(given, *, chunk_rows: int = 65_536) -> np.ndarray:
    """int64 (K, 2): known cells per class with given label 0 and 1."""
    n, k = given.shape
    out = np.zeros((k, 2), dtype=np.int64)
    for a in range(0, n, chunk_rows):
        g = np.asarray(given[a:a + chunk_rows])
        out[:, 0] += (g == 0).sum(0)
        out[:, 1] += (g == 1).sum(0)
    return out


def estimate_noise_rates(given, q, *, chunk_rows: int = 65_536, smoothing: float = SMOOTHING) -> np.ndarray:
    """float64 (K, 2) noise rates (rho0, rho1) per class from the labels and q; see the module."""
    return noise_rates(confident_joint(given, q, chunk_rows=chunk_rows), given_counts(given, chunk_rows=chunk_rows),
                       smoothing=smoothing)


def error_posterior(given, q, rates) -> np.ndarray:
    """float32 P(y* != y~ | q, y~) per known cell under the class-conditional noise model;
    q itself on unknown cells (the chance that the cell is positive).

    Args:
        given: int8 (n, K) labels (a block of rows).
        q: float (n, K) estimate of P(y* = 1) per cell.
        rates: float (K, 2) :func:`noise_rates`.
    Given positive: rho0 (1 - q) / (rho0 (1 - q) + (1 - rho1) q); given negative:
    rho1 q / (rho1 q + (1 - rho0) (1 - q)).
    """
    g = np.asarray(given)
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
    rho0, rho1 = np.asarray(rates, dtype=np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        wrong_pos = rho0 * (1.0 - q)
        wrong_neg = rho1 * q
        e_pos = wrong_pos / (wrong_pos + (1.0 - rho1) * q)
        e_neg = wrong_neg / (wrong_neg + (1.0 - rho0) * (1.0 - q))
    out = np.where(g == 1, e_pos, np.where(g == 0, e_neg, q))
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


#: :func:`count_dispersion` below this: the noise keeps each image's count of positives
#: (an annotator who picks the wrong class); at or above it: the noise changes counts
#: (independent flips). labelfix's choice on the choice runs (digits, seed 0): the
#: mislabel-40 % runs gave 0.30 to 0.71 (frozen, fine-tuned, random init, the demo), the
#: flip-20 % runs 1.00 and 1.85; 0.85 lies between them (docs/training.md "Rounds").
COUNT_KEEPING_MAX = 0.85


def count_dispersion(given, q, *, chunk_rows: int = 65_536) -> float:
    """How far each image's count of given positives scatters around the count the model
    expects, relative to the scatter of independent labels: R = mean_i (c_i - s_i)^2 /
    mean_i v_i, with c_i the given positives of image i, s_i = sum_k q_ik and v_i = sum_k
    q_ik (1 - q_ik) over its known cells (images without a known cell left out).

    Labels drawn independently from calibrated held-out probabilities give R near 1.
    Noise that moves a positive to another class keeps every image's count, so the
    counts scatter less (R well below 1: 0.28 to 0.79 on the mislabel-40 % runs of
    docs/benchmarks.md); independent flips add their own scatter (R 0.99 to 1.85 under
    flip 20 %). A label-free test of the noise's kind (no true label is used); labelfix's
    own measure (docs/training.md "Rounds").

    Args:
        given: int8 (N, K) labels 1 / 0 / -1.
        q: float (N, K) held-out estimate of P(positive) (NaN: not counted).
        chunk_rows: rows read at a time (memory-mapped inputs work).
    Returns NaN when no image has a known cell or every known q is 0 or 1.
    """
    sq = var = 0.0
    images = 0
    for s in range(0, len(given), chunk_rows):
        y = np.asarray(given[s:s + chunk_rows])
        p = np.asarray(q[s:s + chunk_rows], dtype=np.float64)
        known = (y != UNK) & ~np.isnan(p)
        p = np.where(known, p, 0.0)
        has = known.any(1)
        c = np.where(known, y == 1, 0).sum(1)
        sq += float(((c - p.sum(1))[has] ** 2).sum())
        var += float((p * (1 - p)).sum(1)[has].sum())
        images += int(has.sum())
    if images == 0 or var <= 0:
        return float("nan")
    return sq / var
