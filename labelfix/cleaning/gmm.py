# BalanceMix (Song, Kim & Lee, AAAI 2024), "Label-wise management": per class k one
# 2-component 1-D Gaussian mixture on the BCE losses of the cells given z = 1 and one on
# those given z = 0 (2K mixtures); p_G = posterior of the smaller-mean component.
# GMM settings follow DivideMix (Li et al., ICLR 2020, official code): min-max normalised
# losses, max_iter = 10, tol = 1e-2, reg_covar = 5e-4. The EM updates and the stopping
# rule are those of sklearn.mixture.GaussianMixture (1-D, "full" covariance).
"""Batched 1-D two-component Gaussian mixtures fitted by EM for many groups at once.

The data never has to be in memory as a whole: every pass reads the cells chunk by
chunk, so (N, K) loss matrices that only exist as memory-mapped ``.npy`` files can be
fitted.

Passes over the data (see docs/cleaning.md):

1. count / min / max / non-finite count per group;
2. a ``bins``-bin count histogram of the min-max normalised values per group, used for
   the deterministic initialisation (exact 1-D 2-means on the histogram = Otsu
   threshold) and, with ``em="histogram"``, for the EM itself (each cell represented by
   its bin centre, Sheppard's h^2/12 added to the second moment);
3. ``em="exact"`` only: one pass per EM iteration (at most ``max_iter``), accumulating
   float64 responsibility-weighted sums per group; equals sklearn.

For (N, K) label matrices (:func:`fit_label_gmms`) passes 1-2 run in numpy directly on
the raw chunks (float32 arithmetic, masks applied through +-inf bit patterns and a
multiply-by-0 of the bin index, one ``np.bincount`` per chunk), and the EM on the small
(2K, bins) histogram in numpy float64. Generic groups (:func:`fit_gmm_chunks`) use torch.

Groups are identified by an integer id in ``[0, G)``. For an (N, K) label matrix the
group of a known cell (i, k) with given label z is ``2 * k + z`` (so group arrays reshape
to (K, 2) with index [k, z]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from labelfix.errors import LabelfixError
from labelfix.numeric import chunk_rows

if TYPE_CHECKING:  # torch is imported where it is used: the numpy (CPU) path of
    import torch   # fit_label_gmms / clean_posterior never needs it (find_label_issues)

#: Reasons a group is not fitted (``GMMFit.reason``); "" means fitted.
REASON_FITTED = ""
REASON_EMPTY = "empty"
REASON_TOO_FEW = "too_few"
REASON_CONSTANT = "constant"

_EPS10 = 10 * np.finfo(np.float64).eps  # sklearn adds this to the component masses
_LOG_2PI = math.log(2 * math.pi)

ChunkSource = Callable[[], Iterable[tuple["torch.Tensor", "torch.Tensor"]]]


def _is_cpu(device) -> bool:
    """True for the CPU device given as a string (``"cpu"``) or a ``torch.device``."""
    return str(device) == "cpu"



@dataclass
class GMMFit:
    """Fitted mixtures of a batch of groups; every array has the group shape ``gs``
    ((G,) for flat groups, (K, 2) indexed [class, given label] for label GMMs) in front.

    Component 0 is always the lower-mean ("clean") component, component 1 the upper one.
    Means / variances are in normalised units: ``x = (loss - lo) / (hi - lo)``.

    Attributes:
        means, vars, weights: float64 (*gs, 2); NaN for degenerate groups.
        init_means, init_vars, init_weights: float64 (*gs, 2), the initial parameters
            (2-means on the histogram), in the same component order.
        lo, hi: float64 (*gs,): min / max of the group's finite values (NaN if empty).
        n_cells: int64 (*gs,): finite cells used for the fit.
        n_nonfinite: int64 (*gs,): NaN / +-inf cells, excluded from the fit.
        degenerate: bool (*gs,): True where the group was not fitted.
        reason: str (*gs,): "" (fitted), "empty", "too_few" (< ``min_cells``) or
            "constant" (all values equal).
        n_iter: int64 (*gs,): EM iterations run (0 for degenerate groups).
        converged: bool (*gs,): stopped by ``tol`` before ``max_iter``.
        lower_bound: float64 (*gs,): mean log-likelihood per cell at the last E-step.
        settings: dict of the fit options.
    """

    means: np.ndarray
    vars: np.ndarray
    weights: np.ndarray
    init_means: np.ndarray
    init_vars: np.ndarray
    init_weights: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_cells: np.ndarray
    n_nonfinite: np.ndarray
    degenerate: np.ndarray
    reason: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    lower_bound: np.ndarray
    settings: dict

    @property
    def group_shape(self) -> tuple[int, ...]:
        return self.lo.shape

    def reshape(self, *shape: int) -> "GMMFit":
        """The same fit with the group axes reshaped (e.g. (2K,) -> (K, 2))."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                tail = v.shape[len(self.group_shape):]
                v = v.reshape(*shape, *tail)
            out[f.name] = v
        return GMMFit(**out)

    def flat(self) -> "GMMFit":
        return self.reshape(int(np.prod(self.group_shape)))

    def summary(self) -> dict:
        """JSON-friendly summary: counts of degenerate groups by reason, iterations."""
        reasons, counts = np.unique(self.reason, return_counts=True)
        return {
            "groups": int(self.lo.size),
            "fitted": int((~self.degenerate).sum()),
            "degenerate": {str(r): int(c) for r, c in zip(reasons, counts) if r != REASON_FITTED},
            "nonfinite_cells": int(self.n_nonfinite.sum()),
            "max_iter_run": int(self.n_iter.max()) if self.n_iter.size else 0,
            "converged": int(self.converged.sum()),
            "settings": dict(self.settings),
        }


# --------------------------------------------------------------------------- helpers
def _quad_coeffs(means, vars_, weights):
    """a_c(x) = log w_c + log N(x; mu_c, v_c) = alpha_c x^2 + beta_c x + gamma_c.

    means, vars_, weights: (G, 2) torch tensors or numpy arrays.
    Returns alpha, beta, gamma, each (G, 2), of the same kind."""
    log = np.log if isinstance(means, np.ndarray) else _torch().log
    alpha = -0.5 / vars_
    beta = means / vars_
    gamma = log(weights) - 0.5 * (_LOG_2PI + log(vars_)) - 0.5 * means**2 / vars_
    return alpha, beta, gamma


def _torch():
    import torch

    return torch


def _normalise(values: torch.Tensor, gid: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor):
    return (values - lo[gid]) * scale[gid]


def _segment_sum(gid: torch.Tensor, weights: torch.Tensor, n_groups: int) -> torch.Tensor:
    return _torch().bincount(gid, weights=weights, minlength=n_groups)


def _finite(values: torch.Tensor, gid: torch.Tensor):
    ok = _torch().isfinite(values)
    if bool(ok.all()):
        return values, gid
    return values[ok], gid[ok]


def _otsu_init(cnt: np.ndarray, s1: np.ndarray, s2: np.ndarray, reg_covar: float):
    """Exact 1-D 2-means on per-group histograms: split between bins at the threshold that
    minimises the within-cluster sum of squares, then the clusters' weight / mean /
    variance (+ reg_covar), as sklearn's k-means initialisation computes them.

    cnt, s1, s2: float64 (G, B) per-bin count, sum x, sum x^2.
    Returns means, vars, weights, float64 (G, 2).
    """
    c_l = np.cumsum(cnt, 1)[:, :-1]
    m_l = np.cumsum(s1, 1)[:, :-1]
    q_l = np.cumsum(s2, 1)[:, :-1]
    c_r = cnt.sum(1, keepdims=True) - c_l
    m_r = s1.sum(1, keepdims=True) - m_l
    q_r = s2.sum(1, keepdims=True) - q_l
    valid = (c_l > 0) & (c_r > 0)
    between = np.where(valid, m_l**2 / np.maximum(c_l, 1) + m_r**2 / np.maximum(c_r, 1), -np.inf)
    t = between.argmax(1)[:, None]
    pick = lambda left, right: np.concatenate(  # noqa: E731
        [np.take_along_axis(left, t, 1), np.take_along_axis(right, t, 1)], 1)
    cnt2 = np.maximum(pick(c_l, c_r), 1) + _EPS10
    mean = pick(m_l, m_r) / cnt2
    var = np.maximum(pick(q_l, q_r) / cnt2 - mean**2, 0) + reg_covar
    w = cnt2 / cnt2.sum(1, keepdims=True)
    return mean, var, w


def _m_step(n, s1, s2, r_n, r_s1, r_s2, reg_covar):
    """Component-0 responsibility sums (r_n, r_s1, r_s2) and group totals, float64 (G,)
    -> new means, vars, weights (G, 2)."""
    nk = np.maximum(np.stack([r_n, n - r_n], 1), 0) + _EPS10
    mk = np.stack([r_s1, s1 - r_s1], 1)
    qk = np.stack([r_s2, s2 - r_s2], 1)
    means = mk / nk
    vars_ = np.maximum(qk / nk - means**2, 0) + reg_covar
    weights = nk / nk.sum(1, keepdims=True)
    return means, vars_, weights


def _sigmoid_softplus(d: np.ndarray):
    """(sigmoid(d), softplus(d)) with one exp and one log, stable for any d."""
    e = np.exp(-np.abs(d))
    inv = 1.0 / (1.0 + e)
    r = np.where(d >= 0, inv, e * inv)
    sp = np.maximum(d, 0) + np.log1p(e)
    return r, sp


# --------------------------------------------------------------------------- statistics
@dataclass
class _Stats:
    """Per-group sufficient statistics of passes 1-2 (float64 / int64, G groups).

    n: finite cells; n_bad: non-finite cells; lo / hi: min / max of the finite values
    (+inf / -inf for empty groups); hist: (G, B) counts of the normalised values
    x = (v - lo) / (hi - lo) in the bins [j / B, (j + 1) / B) (x = 1 in the last bin).
    """

    n: np.ndarray
    n_bad: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    hist: np.ndarray


def _constant(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ~((hi - lo) > 1e-12 * np.maximum(1.0, np.abs(hi)))


def _scales(lo: np.ndarray, hi: np.ndarray):
    """(lo with 0 where not finite, 1 / (hi - lo) with 0 for empty / constant groups)."""
    const = _constant(lo, hi)
    lo0 = np.where(np.isfinite(lo), lo, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(const, 0.0, 1.0 / np.where(const, 1.0, hi - lo))
    return lo0, scale


def _stats_chunks(stream, G: int, B: int, dev) -> _Stats:
    """Passes 1-2 over a generic stream of (values, gid) float64 / long tensors."""
    import torch

    f64 = dict(dtype=torch.float64, device=dev)
    n = torch.zeros(G, **f64)
    n_bad = torch.zeros(G, **f64)
    lo = torch.full((G,), math.inf, **f64)
    hi = torch.full((G,), -math.inf, **f64)
    for values, gid in stream():
        ok = torch.isfinite(values)
        n_bad += _segment_sum(gid, (~ok).to(torch.float64), G)
        v, g = values[ok], gid[ok]
        n += _segment_sum(g, None, G).to(torch.float64)
        lo.scatter_reduce_(0, g, v, "amin")
        hi.scatter_reduce_(0, g, v, "amax")
    lo_np, hi_np = lo.cpu().numpy(), hi.cpu().numpy()
    lo0, scale = (torch.as_tensor(a, **f64) for a in _scales(lo_np, hi_np))
    hist = torch.zeros(G * B, **f64)
    for values, gid in stream():
        v, g = _finite(values, gid)
        x = _normalise(v, g, lo0, scale)
        b = (x * B).floor().clamp_(0, B - 1).long() + g * B
        hist += _segment_sum(b, None, G * B).to(torch.float64)
    return _Stats(n=n.cpu().numpy(), n_bad=n_bad.cpu().numpy(), lo=lo_np, hi=hi_np,
                  hist=hist.view(G, B).cpu().numpy())


# Fast passes 1-2 for (N, K) label matrices, in numpy on the raw chunks (no index arrays,
# no boolean compaction, no float64 on the big arrays unless the input is float64). Masks
# are applied with fmax / fmin against +-inf built from the mask bits, so NaN / garbage
# in unknown cells never reaches a reduction; sub-chunks of ~2^18 cells stay in cache.
_INF_BITS = {np.dtype(np.float32): (np.uint32, 31, 0x7F800000),
             np.dtype(np.float64): (np.uint64, 63, 0x7FF0000000000000)}
_SUB_CELLS = 1 << 18


def _minus_inf_where(mask: np.ndarray, dtype) -> np.ndarray:
    """float array of ``mask``'s shape: -inf where mask is True, +inf elsewhere."""
    ut, shift, inf_bits = _INF_BITS[np.dtype(dtype)]
    bits = np.ascontiguousarray(mask).view(np.uint8).astype(ut)
    bits <<= ut(shift)
    bits |= ut(inf_bits)
    return bits.view(dtype)


def _tree_reduce(x: np.ndarray, op) -> np.ndarray:
    """op-reduce the scratch array x (R, K) over axis 0 in place (halving steps)."""
    n = x.shape[0]
    while n > 1:
        h = n // 2
        op(x[:h], x[n - h:n], out=x[:h])
        n -= h
    return x[0]


def _read_label_chunk(losses, given, a: int, b: int):
    """Rows [a, b): losses as float32 (float64 if stored as float64), given as int8."""
    z = np.asarray(given[a:b])
    if z.size and (int(z.min()) < -1 or int(z.max()) > 1):
        bad = np.argwhere((z < -1) | (z > 1))[0]
        raise LabelfixError(f"given: row {a + bad[0]}, column {bad[1]}: label must be 1, 0 or -1")
    z = np.ascontiguousarray(z, dtype=np.int8)
    l = np.asarray(losses[a:b])
    dt = np.float64 if l.dtype == np.float64 else np.float32
    return np.ascontiguousarray(l, dtype=dt), z


def _sub_chunks(n_rows: int, K: int):
    return _row_chunks(n_rows, max(1, _SUB_CELLS // max(1, K)))


def _label_stats(losses, given, N: int, K: int, B: int, rows: int) -> _Stats:
    """Passes 1-2 for the 2K label groups (group 2k + z) of an (N, K) matrix."""
    G = 2 * K
    lo = np.full((2, K), np.inf)
    hi = np.full((2, K), -np.inf)
    n_bad = np.zeros(G)
    flagged = set()  # sub-chunks (row, row) with non-finite known values
    cols2 = 2 * np.arange(K)
    for a, b in _row_chunks(N, rows):
        L, Z = _read_label_chunk(losses, given, a, b)
        for s, e in _sub_chunks(b - a, K):
            l, z = L[s:e], Z[s:e]
            c_lo, c_hi = np.empty((2, K), l.dtype), np.empty((2, K), l.dtype)
            for zz in (0, 1):
                p = _minus_inf_where(z == zz, l.dtype)
                c_lo[zz] = _tree_reduce(np.fmax(l, p), np.minimum)   # NaN member -> -inf
                np.negative(p, out=p)
                c_hi[zz] = _tree_reduce(np.fmin(l, p), np.maximum)   # NaN member -> +inf
            empty = (c_lo == np.inf) & (c_hi == -np.inf)
            if not bool((empty | (np.isfinite(c_lo) & np.isfinite(c_hi))).all()):
                flagged.add((a + s, a + e))
                fin = np.isfinite(l)
                bad = (z >= 0) & ~fin
                n_bad += np.bincount((cols2[None, :] + z)[bad], minlength=G)
                for zz in (0, 1):
                    m = (z == zz) & fin
                    c_lo[zz] = np.where(m, l, np.inf).min(0)
                    c_hi[zz] = np.where(m, l, -np.inf).max(0)
            np.minimum(lo, c_lo, out=lo)
            np.maximum(hi, c_hi, out=hi)
    lo, hi = lo.T.ravel(), hi.T.ravel()   # group 2k + z

    # pass 2: slot index v = 1 + g S + 1 + x B (S = B + 2 slots per group): slot 1 + g S
    # catches rounding below x = 0, slot 1 + g S + B + 1 the value x = 1; slot 0 collects
    # the cells not fitted (unknown, non-finite): their index is multiplied by 0 after the
    # float -> int conversion, so NaN / inf / garbage there never matters.
    S = B + 2
    size = G * S + 1
    lo0, scale = _scales(lo, hi)
    A = B * scale
    C = np.arange(G) * S + 2.0 - lo0 * A
    # float32 index arithmetic is accurate to < 1/4 bin while |l A| and |v| < 2^20; a
    # cell's slope is rebuilt as A_0 + z (A_1 - A_0) from its column's two groups, so the
    # larger slope of a column times its largest |loss| counts too (a tiny-range group
    # next to a wide one made float32 cancel to garbage)
    mag = np.where(np.isfinite(lo), np.abs(lo), 0.0) + np.where(np.isfinite(hi), np.abs(hi), 0.0)
    col_a = np.maximum(A[0::2], A[1::2])
    col_mag = np.maximum(mag[0::2], mag[1::2])
    big = max(float(np.max(np.abs(lo0) * A + np.abs(C), initial=0.0)),
              float(np.max(col_a * col_mag, initial=0.0))) + B
    counts = np.zeros(size, dtype=np.int64)
    buf = np.empty(0, dtype=np.intp)
    for a, b in _row_chunks(N, rows):
        L, Z = _read_label_chunk(losses, given, a, b)
        dt = np.float64 if (L.dtype == np.float64 or big >= 2.0 ** 20) else np.float32
        L = L.astype(dt, copy=False)
        A0, dA = A[0::2].astype(dt), (A[1::2] - A[0::2]).astype(dt)
        C0, dC = C[0::2].astype(dt), (C[1::2] - C[0::2]).astype(dt)
        if buf.size < L.size:
            buf = np.empty(L.size, dtype=np.intp)
        for s, e in _sub_chunks(b - a, K):
            l, z = L[s:e], Z[s:e]
            m1 = (z == 1).view(np.uint8)
            v = np.multiply(m1, dA, dtype=dt)
            v += A0
            v *= l
            c = np.multiply(m1, dC, dtype=dt)
            c += C0
            v += c
            fitted = z >= 0
            if (a + s, a + e) in flagged:
                fitted &= np.isfinite(l)
            iv = buf[s * K:e * K].reshape(e - s, K)
            with np.errstate(invalid="ignore"):
                np.copyto(iv, v, casting="unsafe")
            np.multiply(iv, fitted, out=iv)
        counts += np.bincount(buf[:L.size], minlength=size)
    h = counts[1:].reshape(G, S).astype(np.float64)
    n = h.sum(1)
    hist = h[:, 1:B + 1].copy()
    hist[:, 0] += h[:, 0]
    hist[:, -1] += h[:, B + 1]
    return _Stats(n=n, n_bad=n_bad, lo=lo, hi=hi, hist=hist)


# --------------------------------------------------------------------------- fitting
def _check_options(max_iter, tol, reg_covar, em, bins):
    if em not in ("exact", "histogram"):
        raise LabelfixError(f"gmm: em: must be 'exact' or 'histogram', got {em!r}")
    if max_iter < 1 or bins < 2 or tol < 0 or reg_covar < 0:
        raise LabelfixError("gmm: options: need max_iter >= 1, bins >= 2, tol >= 0, reg_covar >= 0")


def _fit_from_stats(st: _Stats, stream, *, max_iter, tol, reg_covar, em, min_cells, dev) -> GMMFit:
    """Initialisation on the histogram, then EM (on the histogram, or one pass of
    ``stream`` per iteration for ``em="exact"``; only that one uses torch)."""
    G, B = st.hist.shape
    reason = np.full(G, REASON_FITTED, dtype=object)
    reason[_constant(st.lo, st.hi)] = REASON_CONSTANT
    reason[st.n < min_cells] = REASON_TOO_FEW
    reason[st.n == 0] = REASON_EMPTY
    degenerate = reason != REASON_FITTED
    lo0, scale = _scales(st.lo, st.hi)
    if em == "exact":
        import torch

        f64 = dict(dtype=torch.float64, device=dev)
        lo0_t, scale_t = torch.as_tensor(lo0, **f64), torch.as_tensor(scale, **f64)

    # histogram moments at the bin centres c_j; the within-bin variance h^2 / 12 of a
    # uniform bin is added to sum x^2 (Sheppard's correction). All on the small (G, B)
    # histogram, in numpy float64.
    h = 1.0 / B
    c = (np.arange(B) + 0.5) * h
    cnt = np.asarray(st.hist, dtype=np.float64)
    hs1 = cnt * c
    hs2 = cnt * (c * c + h * h / 12.0)
    n = cnt.sum(1)
    if em == "histogram":
        s1, s2 = hs1.sum(1), hs2.sum(1)
    else:
        s1, s2 = np.zeros(G), np.zeros(G)

    means, vars_, weights = _otsu_init(cnt, hs1, hs2, reg_covar)
    init = (means.copy(), vars_.copy(), weights.copy())

    active = ~degenerate
    n_iter = np.zeros(G, dtype=np.int64)
    converged = np.zeros(G, dtype=bool)
    prev_lb = np.full(G, -np.inf)
    lower_bound = np.full(G, np.nan)
    n_safe = np.maximum(n, 1)
    c2 = c * c

    for it in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        alpha, beta, gamma = _quad_coeffs(means[idx], vars_[idx], weights[idx])
        A = alpha[:, 0] - alpha[:, 1]
        Bq = beta[:, 0] - beta[:, 1]
        C = gamma[:, 0] - gamma[:, 1]
        if em == "exact":
            sums = torch.zeros(6, G, **f64)  # r, r x, r x^2, softplus, x, x^2
            At, Bt, Ct = (torch.zeros(G, **f64).index_copy_(0, torch.as_tensor(idx, device=dev),
                                                            torch.as_tensor(q, **f64)) for q in (A, Bq, C))
            for values, gid in stream():
                v, g = _finite(values, gid)
                x = _normalise(v, g, lo0_t, scale_t)
                x2 = x * x
                if it == 0:
                    sums[4] += _segment_sum(g, x, G)
                    sums[5] += _segment_sum(g, x2, G)
                d = At[g] * x2 + Bt[g] * x + Ct[g]
                r = torch.sigmoid(d)
                sums[0] += _segment_sum(g, r, G)
                sums[1] += _segment_sum(g, r * x, G)
                sums[2] += _segment_sum(g, r * x2, G)
                sums[3] += _segment_sum(g, torch.nn.functional.softplus(d), G)
            sums = sums.cpu().numpy()
            if it == 0:
                s1, s2 = sums[4], sums[5]
            r_n, r_s1, r_s2, sp = (q[idx] for q in sums[:4])
        else:
            d = A[:, None] * c2 + Bq[:, None] * c + C[:, None]
            r, spd = _sigmoid_softplus(d)
            rc = r * cnt[idx]
            r_n = rc.sum(1)
            r_s1 = rc @ c
            r_s2 = rc @ (c2 + h * h / 12.0)
            sp = (spd * cnt[idx]).sum(1)
        # log p(x) = a_1(x) + softplus(a_0(x) - a_1(x)); sum of a_1 from the moments
        ll = (alpha[:, 1] * s2[idx] + beta[:, 1] * s1[idx] + gamma[:, 1] * n[idx] + sp) / n_safe[idx]
        means[idx], vars_[idx], weights[idx] = _m_step(n[idx], s1[idx], s2[idx], r_n, r_s1, r_s2, reg_covar)
        lower_bound[idx] = ll
        n_iter[idx] += 1
        done = np.abs(ll - prev_lb[idx]) < tol
        converged[idx[done]] = True
        prev_lb[idx] = ll
        active[idx[done]] = False

    # component 0 = lower mean
    swap = (means[:, 0] > means[:, 1])[:, None]

    def out(a):
        a = np.where(swap, a[:, ::-1], a).astype(np.float64) if a.ndim == 2 else a.astype(np.float64)
        a[degenerate] = np.nan
        return a

    lo_np, hi_np = st.lo.astype(np.float64), st.hi.astype(np.float64)
    lo_np[st.n == 0] = np.nan
    hi_np[st.n == 0] = np.nan
    return GMMFit(
        means=out(means), vars=out(vars_), weights=out(weights),
        init_means=out(init[0]), init_vars=out(init[1]), init_weights=out(init[2]),
        lo=lo_np, hi=hi_np,
        n_cells=st.n.astype(np.int64), n_nonfinite=st.n_bad.astype(np.int64),
        degenerate=degenerate, reason=reason.astype(str),
        n_iter=n_iter, converged=converged,
        lower_bound=out(lower_bound),
        settings=dict(max_iter=max_iter, tol=tol, reg_covar=reg_covar, em=em, bins=B,
                      min_cells=min_cells),
    )


def fit_gmm_chunks(
    chunks: ChunkSource,
    n_groups: int,
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    em: str = "exact",
    bins: int = 1024,
    min_cells: int = 8,
    device: str | torch.device = "cpu",
) -> GMMFit:
    """Fit one 2-component 1-D GMM per group from a re-iterable stream of chunks.

    Args:
        chunks: a callable returning a fresh iterator of ``(values, gid)`` pairs:
            ``values`` float tensor (M,) of raw values (NaN / inf allowed; they are
            excluded and counted), ``gid`` long tensor (M,) of group ids in [0, n_groups).
            It is called once per pass.
        n_groups: G.
        max_iter, tol, reg_covar: as sklearn's GaussianMixture. Iteration t runs the
            E-step (mean log-likelihood L_t with the current parameters) then the M-step;
            a group stops when |L_t - L_{t-1}| < tol (L_0 = -inf), exactly sklearn's rule,
            per group.
        em: "exact" (one pass over the data per EM iteration; equals sklearn up to float
            rounding) or "histogram" (EM on the per-group ``bins``-bin count histogram of
            pass 2, every cell represented by its bin centre; no further passes).
        bins: histogram bins per group (initialisation, and the EM with "histogram").
        min_cells: groups with fewer finite cells are degenerate ("too_few").
        device: torch device for the arithmetic (chunks are moved there).

    Returns:
        GMMFit with flat group shape (G,).
    """
    import torch

    _check_options(max_iter, tol, reg_covar, em, bins)
    dev = torch.device(device)

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for values, gid in chunks():
            yield values.to(dev, torch.float64), gid.to(dev, torch.long)

    st = _stats_chunks(stream, int(n_groups), int(bins), dev)
    return _fit_from_stats(st, stream, max_iter=max_iter, tol=tol, reg_covar=reg_covar, em=em,
                           min_cells=min_cells, dev=dev)


def posterior_values(values, gid, fit: GMMFit, *, monotone: bool = True, device="cpu") -> torch.Tensor:
    """p_G, the posterior of the lower-mean component, for raw values of given groups.

    Args:
        values: float tensor (M,) of raw (un-normalised) values.
        gid: long tensor (M,) of group ids into ``fit.flat()``.
        fit: the fitted mixtures.
        monotone: hold the log-odds constant beyond its turning point so that p_G never
            increases with the value (a two-Gaussian posterior with unequal variances
            turns back up far in the tail of the narrower component).

    Returns float64 tensor (M,). Conventions: values are normalised with the group's
    lo / hi and clipped to [0, 1] (so +inf counts as the group's largest value); NaN
    values and cells of degenerate groups get p_G = 1 (clean).
    """
    import torch

    flat = fit.flat()
    dev = torch.device(device)
    values = torch.as_tensor(values).to(dev, torch.float64)
    gid = torch.as_tensor(gid).to(dev, torch.long)
    t = lambda a: torch.as_tensor(np.nan_to_num(a, nan=0.0), dtype=torch.float64, device=dev)  # noqa: E731
    deg = torch.as_tensor(flat.degenerate, device=dev)
    lo = t(flat.lo)
    span = t(flat.hi) - lo
    scale = torch.where(deg | (span <= 0), torch.zeros_like(span), 1.0 / torch.where(span > 0, span, torch.ones_like(span)))
    ones = torch.ones_like(t(flat.means))
    means = torch.where(deg[:, None], ones * torch.tensor([0.0, 1.0], dtype=torch.float64, device=dev), t(flat.means))
    vars_ = torch.where(deg[:, None], ones, t(flat.vars))
    weights = torch.where(deg[:, None], ones * 0.5, t(flat.weights))
    alpha, beta, gamma = _quad_coeffs(means, vars_, weights)
    A = alpha[:, 0] - alpha[:, 1]
    Bq = beta[:, 0] - beta[:, 1]
    C = gamma[:, 0] - gamma[:, 1]
    x = ((values - lo[gid]) * scale[gid]).clamp(0.0, 1.0)
    if monotone:
        # d(x) = A x^2 + B x + C; turning point x* = -B / (2A)
        safe_a = torch.where(A == 0, torch.ones_like(A), A)
        xstar = torch.where(A == 0, torch.full_like(A, math.nan), -Bq / (2 * safe_a))
        a_g, xs = A[gid], xstar[gid]
        x = torch.where((a_g > 0) & (x > xs), xs, x)
        x = torch.where((a_g < 0) & (x < xs), xs, x)
    d = A[gid] * x * x + Bq[gid] * x + C[gid]
    p = torch.sigmoid(d)
    p = torch.where(deg[gid] | torch.isnan(values), torch.ones_like(p), p)
    return p


def _posterior_np(values: np.ndarray, gid: np.ndarray, fit: GMMFit, *, monotone: bool = True) -> np.ndarray:
    """:func:`posterior_values` in numpy float64 (the same arithmetic, step by step)."""
    flat = fit.flat()
    deg = np.asarray(flat.degenerate, dtype=bool)
    t = lambda a: np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0)  # noqa: E731
    lo = t(flat.lo)
    span = t(flat.hi) - lo
    with np.errstate(divide="ignore"):
        scale = np.where(deg | (span <= 0), 0.0, 1.0 / np.where(span > 0, span, 1.0))
    ones = np.ones_like(t(flat.means))
    means = np.where(deg[:, None], ones * np.array([0.0, 1.0]), t(flat.means))
    vars_ = np.where(deg[:, None], ones, t(flat.vars))
    weights = np.where(deg[:, None], ones * 0.5, t(flat.weights))
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha, beta, gamma = _quad_coeffs(means, vars_, weights)
    A = alpha[:, 0] - alpha[:, 1]
    Bq = beta[:, 0] - beta[:, 1]
    C = gamma[:, 0] - gamma[:, 1]
    with np.errstate(invalid="ignore"):
        x = np.clip((values - lo[gid]) * scale[gid], 0.0, 1.0)
    if monotone:
        safe_a = np.where(A == 0, 1.0, A)
        xstar = np.where(A == 0, math.nan, -Bq / (2 * safe_a))
        a_g, xs = A[gid], xstar[gid]
        x = np.where((a_g > 0) & (x > xs), xs, x)
        x = np.where((a_g < 0) & (x < xs), xs, x)
    d = A[gid] * x * x + Bq[gid] * x + C[gid]
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-d))
    return np.where(deg[gid] | np.isnan(values), 1.0, p)


# --------------------------------------------------------------------------- (N, K) API
def _row_chunks(n_rows: int, chunk_rows: int):
    for start in range(0, n_rows, chunk_rows):
        yield start, min(n_rows, start + chunk_rows)


#: rows per chunk holding about 2M cells (labelfix.numeric.chunk_rows)
default_chunk_rows = chunk_rows


def _check_pair(losses, given) -> tuple[int, int]:
    if len(getattr(given, "shape", ())) != 2:
        raise LabelfixError(f"given: shape {getattr(given, 'shape', None)}: must be (N, K)")
    if tuple(losses.shape) != tuple(given.shape):
        raise LabelfixError(f"losses: shape {tuple(losses.shape)}: does not match given {tuple(given.shape)}")
    return int(given.shape[0]), int(given.shape[1])


def _label_chunk(losses, given, start, stop):
    """Known cells of rows [start, stop): (values, gid, known mask) with gid = 2k + z."""
    import torch

    z = torch.from_numpy(np.array(given[start:stop], dtype=np.int16))
    if bool(((z < -1) | (z > 1)).any()):
        bad = np.argwhere(((z < -1) | (z > 1)).numpy())[0]
        raise LabelfixError(f"given: row {start + bad[0]}, column {bad[1]}: label must be 1, 0 or -1")
    l = torch.from_numpy(np.array(losses[start:stop], dtype=np.float64))
    known = z >= 0
    cols = torch.arange(z.shape[1], dtype=torch.long)
    gid = (2 * cols)[None, :] + z.long()
    return l[known], gid[known], known


def fit_label_gmms(
    losses,
    given,
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    em: str = "histogram",
    bins: int = 1024,
    min_cells: int = 8,
    chunk_rows: int | None = None,
    device: str | torch.device = "cpu",
) -> GMMFit:
    """Fit BalanceMix's 2K label-wise loss GMMs: one per (class k, given label z).

    Passes 1-2 (min / max, histogram) run in numpy directly on the (N, K) chunks
    (float32 unless the losses are stored as float64); the EM then runs on the
    (2K, ``bins``) histogram (``em="histogram"``, the default: two passes over the data
    in all) or with one exact pass per iteration (``em="exact"``, equals sklearn).

    Args:
        losses: float (N, K) per-cell losses (array, memmap, or any object with
            ``.shape`` and row slicing ``losses[a:b]`` returning an (b - a, K) array).
        given: int8 (N, K), 1 / 0 / -1; unknown cells (-1) are not fitted.
        em: "histogram" (default) or "exact", see :func:`fit_gmm_chunks`.
        chunk_rows: rows read per chunk (default: about 2M cells per chunk).
        device: torch device for the exact EM passes (``em="exact"``); passes 1-2 and
            the histogram EM run in numpy on the CPU.
        Other options: see :func:`fit_gmm_chunks`.

    Returns:
        GMMFit with group shape (K, 2), indexed [k, z] (z = given label 0 or 1).
    """
    _check_options(max_iter, tol, reg_covar, em, bins)
    N, K = _check_pair(losses, given)
    rows = chunk_rows or default_chunk_rows(K)
    dev = None
    if em == "exact":  # the histogram EM runs in numpy: no torch import
        import torch

        dev = torch.device(device)
    st = _label_stats(losses, given, N, K, int(bins), rows)

    def stream():
        for a, b in _row_chunks(N, rows):
            v, g, _ = _label_chunk(losses, given, a, b)
            yield v.to(dev), g.to(dev)

    fit = _fit_from_stats(st, stream, max_iter=max_iter, tol=tol, reg_covar=reg_covar, em=em,
                          min_cells=min_cells, dev=dev)
    return fit.reshape(K, 2)


def clean_posterior_rows(losses, given, fit: GMMFit, start: int, stop: int, *, monotone: bool = True,
                         device="cpu") -> np.ndarray:
    """p_G for rows [start, stop) as float32 (stop - start, K); NaN for unknown cells.

    On the CPU this runs in numpy (:func:`_posterior_np`, no torch import); other
    devices go through :func:`posterior_values`."""
    if _is_cpu(device):
        z = np.array(given[start:stop], dtype=np.int16)
        if z.size and (int(z.min()) < -1 or int(z.max()) > 1):
            bad = np.argwhere((z < -1) | (z > 1))[0]
            raise LabelfixError(f"given: row {start + bad[0]}, column {bad[1]}: label must be 1, 0 or -1")
        known = z >= 0
        gid = (2 * np.arange(z.shape[1], dtype=np.int64))[None, :] + z
        out = np.full(z.shape, np.nan, dtype=np.float32)
        values = np.array(losses[start:stop], dtype=np.float64)[known]
        out[known] = _posterior_np(values, gid[known], fit, monotone=monotone).astype(np.float32)
        return out
    import torch

    v, g, known = _label_chunk(losses, given, start, stop)
    out = torch.full(known.shape, math.nan, dtype=torch.float32)
    out[known] = posterior_values(v, g, fit, monotone=monotone, device=device).to("cpu", torch.float32)
    return out.numpy()


def clean_posterior(losses, given, fit: GMMFit, *, monotone: bool = True, chunk_rows: int | None = None,
                    out: np.ndarray | None = None, device="cpu") -> np.ndarray:
    """p_G for every cell: float32 (N, K), NaN for unknown cells (see :func:`posterior_values`).

    ``out``: optional preallocated float32 (N, K) array or writable memmap to fill.
    """
    N, K = _check_pair(losses, given)
    if fit.group_shape != (K, 2):
        raise LabelfixError(f"gmm: groups {fit.group_shape}: do not match {K} classes")
    rows = chunk_rows or default_chunk_rows(K)
    if out is None:
        out = np.empty((N, K), dtype=np.float32)
    for a, b in _row_chunks(N, rows):
        out[a:b] = clean_posterior_rows(losses, given, fit, a, b, monotone=monotone, device=device)
    return out


def fit_gmm_groups(values: Sequence[np.ndarray], **kwargs) -> GMMFit:
    """Convenience: one GMM per 1-D array of ``values`` (all held in memory).

    Keyword options as :func:`fit_gmm_chunks`. Returns group shape (len(values),).
    """
    import torch

    vals = [torch.as_tensor(np.asarray(v, dtype=np.float64).ravel()) for v in values]
    gid = [torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(vals)]
    cat_v = torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)
    cat_g = torch.cat(gid) if gid else torch.zeros(0, dtype=torch.long)
    return fit_gmm_chunks(lambda: [(cat_v, cat_g)], len(vals), **kwargs)
