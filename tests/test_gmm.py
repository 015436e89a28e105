"""Batched label-wise GMMs vs sklearn.mixture.GaussianMixture (same init, same rules)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from labelfix.cleaning import gmm
from labelfix.cleaning.gmm import (clean_posterior, fit_gmm_groups, fit_label_gmms, posterior_values)
from labelfix.errors import LabelfixError


def _bimodal(rng, n_clean, n_noisy, loc=2.0):
    return np.concatenate([rng.gamma(2.0, 0.05, n_clean), rng.normal(loc, 0.4, n_noisy)])


def _sklearn(x_norm, fit, i):
    gm = GaussianMixture(2, covariance_type="full", max_iter=10, tol=1e-2, reg_covar=5e-4,
                         means_init=fit.init_means[i][:, None],
                         precisions_init=(1.0 / fit.init_vars[i])[:, None, None],
                         weights_init=fit.init_weights[i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x_norm[:, None])
    return gm


def test_exact_matches_sklearn_same_init():
    atol = 1e-9
    rng = np.random.default_rng(0)
    groups = [_bimodal(rng, 900, 100), _bimodal(rng, 400, 300, loc=1.0), rng.random(500), rng.normal(0, 1, 300)]
    fit = fit_gmm_groups(groups, em="exact")
    assert not fit.degenerate.any()
    for i, v in enumerate(groups):
        x = (v - fit.lo[i]) / (fit.hi[i] - fit.lo[i])
        gm = _sklearn(x, fit, i)
        o = np.argsort(gm.means_.ravel())
        np.testing.assert_allclose(fit.means[i], gm.means_.ravel()[o], atol=atol)
        np.testing.assert_allclose(fit.vars[i], gm.covariances_.ravel()[o], atol=atol)
        np.testing.assert_allclose(fit.weights[i], gm.weights_[o], atol=atol)
        assert fit.n_iter[i] == gm.n_iter_ and fit.converged[i] == gm.converged_
        p = posterior_values(torch.tensor(v), torch.full((len(v),), i), fit, monotone=False).numpy()
        np.testing.assert_allclose(p, gm.predict_proba(x[:, None])[:, o[0]], atol=100 * atol)


def test_label_gmms_chunked_equals_flat_and_clean_decisions():
    rng = np.random.default_rng(1)
    N, K = 600, 3
    given = (rng.random((N, K)) < 0.4).astype(np.int8)
    given[rng.random((N, K)) < 0.1] = -1
    noisy = rng.random((N, K)) < 0.15
    losses = np.where(noisy, rng.normal(3.0, 0.3, (N, K)), rng.gamma(2.0, 0.05, (N, K))).astype(np.float32)
    fit = fit_label_gmms(losses, given, chunk_rows=37, em="exact")
    assert fit.means.shape == (K, 2, 2) and fit.lo.shape == (K, 2)
    groups = [losses[:, k][given[:, k] == z] for k in range(K) for z in (0, 1)]
    flat = fit_gmm_groups(groups, em="exact")
    # the numpy passes bin in float32: a cell on a bin edge may land in the neighbouring bin
    # (shifting the histogram init by <= h / cluster size); the exact EM then converges
    # to the same parameters
    np.testing.assert_allclose(fit.flat().init_means, flat.init_means, atol=1e-4)
    np.testing.assert_allclose(fit.flat().means, flat.means, atol=1e-6)
    np.testing.assert_array_equal(fit.flat().n_cells, [len(g) for g in groups])
    p = clean_posterior(losses, given, fit, chunk_rows=50)
    assert p.dtype == np.float32 and np.isnan(p[given == -1]).all()
    known = given >= 0
    # well separated: the clean decision is exactly the simulated one, and equals sklearn's
    np.testing.assert_array_equal(p[known] > 0.5, ~noisy[known])
    for k in range(K):
        for z in (0, 1):
            m = given[:, k] == z
            x = (losses[m, k] - fit.lo[k, z]) / (fit.hi[k, z] - fit.lo[k, z])
            gm = _sklearn(x, fit.flat(), 2 * k + z)
            lower = np.argmin(gm.means_.ravel())
            np.testing.assert_array_equal(gm.predict_proba(x[:, None])[:, lower] > 0.5, p[m, k] > 0.5)


def test_memmap_input(tmp_path):
    rng = np.random.default_rng(2)
    losses = rng.gamma(2.0, 0.1, (200, 4)).astype(np.float16)
    given = (rng.random((200, 4)) < 0.5).astype(np.int8)
    np.save(tmp_path / "l.npy", losses)
    np.save(tmp_path / "g.npy", given)
    for em in ("histogram", "exact"):
        a = fit_label_gmms(np.load(tmp_path / "l.npy", mmap_mode="r"), np.load(tmp_path / "g.npy", mmap_mode="r"),
                           chunk_rows=16, em=em)
        b = fit_label_gmms(losses.astype(np.float64), given, em=em)   # float64 arithmetic path
        np.testing.assert_array_equal(a.lo, b.lo)
        np.testing.assert_allclose(a.means, b.means, atol=1e-12)


def test_degenerate_groups_and_nonfinite():
    rng = np.random.default_rng(3)
    N, K = 100, 4
    given = np.zeros((N, K), np.int8)
    given[:50, 0] = 1                      # class 0: both groups fitted
    given[:, 1] = -1                       # class 1: all unknown -> both groups empty
    given[:5, 2] = 1                       # class 2: 5 positives -> too_few
    losses = rng.gamma(2.0, 0.1, (N, K))
    losses[:, 3] = 0.7                     # class 3: constant negatives; no positives -> empty
    losses[0, 0], losses[1, 0], losses[2, 0] = np.nan, np.inf, -np.inf
    fit = fit_label_gmms(losses, given)
    assert fit.reason.tolist() == [["", ""], ["empty", "empty"], ["", "too_few"], ["constant", "empty"]]
    assert fit.n_nonfinite[0, 1] == 3 and fit.n_cells[0, 1] == 47
    assert np.isnan(fit.means[1]).all() and fit.n_iter[3, 0] == 0
    p = clean_posterior(losses, given, fit)
    assert np.isnan(p[:, 1]).all()
    assert (p[:5, 2] == 1).all() and (p[:, 3] == 1).all()
    assert p[0, 0] == 1.0                          # NaN loss: no evidence -> clean
    assert p[1, 0] == p[3:50, 0].min()              # +inf counts as the group's largest loss
    assert p[2, 0] == p[3:50, 0].max()              # -inf as its smallest
    summary = fit.summary()
    assert summary["degenerate"] == {"empty": 3, "too_few": 1, "constant": 1}


def test_monotone_posterior_never_increases_with_loss():
    # clean component much wider than the noisy one: the raw posterior turns back up
    import dataclasses
    base = fit_gmm_groups([np.linspace(0.0, 1.0, 50)])
    fit = dataclasses.replace(base, means=np.array([[0.2, 0.5]]), vars=np.array([[0.05, 0.001]]),
                              weights=np.array([[0.7, 0.3]]))
    grid = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    gid = torch.zeros(2001, dtype=torch.long)
    raw = posterior_values(grid, gid, fit, monotone=False).numpy()
    mono = posterior_values(grid, gid, fit, monotone=True).numpy()
    assert np.diff(raw).max() > 1e-3                     # the artifact exists
    assert np.diff(mono).max() <= 1e-12                  # and is removed
    assert raw[-1] > 0.5 and mono[-1] < 0.5              # the largest loss is not called clean


def test_bad_input():
    with pytest.raises(LabelfixError):
        fit_label_gmms(np.zeros((3, 2)), np.zeros((3, 3), np.int8))
    with pytest.raises(LabelfixError, match="row 1, column 0"):
        fit_label_gmms(np.zeros((3, 2)), np.array([[0, 1], [2, 0], [0, 0]], np.int8))
    with pytest.raises(LabelfixError):
        fit_gmm_groups([np.zeros(3)], em="bogus")


def _groups_and_matrix(rng, N=3000, K=3):
    given = (rng.random((N, K)) < 0.4).astype(np.int8)
    given[rng.random((N, K)) < 0.1] = -1
    noisy = rng.random((N, K)) < 0.15
    losses = np.where(noisy, rng.normal(3.0, 0.3, (N, K)), rng.gamma(2.0, 0.05, (N, K))).astype(np.float32)
    return losses, given, noisy


def test_histogram_em_agrees_with_exact_and_sklearn():
    # Histogram EM represents every normalised value by its bin centre: a shift of at most
    # h / 2 = 1 / (2 * 1024) ~ 4.9e-4, so the parameters move by O(h); we require 1e-3 (~h).
    # Posterior: |dp/dd| <= 1/4 and |dd/dmu| = |x - mu| / var <= 1 / reg_covar = 2000, so a
    # parameter shift of ~2e-5 (what these data give) bounds |dp| by ~1e-2.
    rng = np.random.default_rng(5)
    groups = [_bimodal(rng, 9000, 1000), _bimodal(rng, 4000, 3000, loc=1.0), rng.random(5000),
              rng.normal(0, 1, 3000), _bimodal(rng, 900, 100)]
    ex = fit_gmm_groups(groups, em="exact")
    hi = fit_gmm_groups(groups, em="histogram")
    np.testing.assert_allclose(hi.init_means, ex.init_means, atol=0)   # same init (same histogram)
    for name in ("means", "vars", "weights"):
        np.testing.assert_allclose(getattr(hi, name), getattr(ex, name), atol=1e-3)
    np.testing.assert_allclose(hi.means, ex.means, atol=1e-4)      # in fact much closer than h
    for i, v in enumerate(groups):
        gid = torch.full((len(v),), i)
        ph = posterior_values(torch.tensor(v), gid, hi, monotone=False).numpy()
        pe = posterior_values(torch.tensor(v), gid, ex, monotone=False).numpy()
        np.testing.assert_allclose(ph, pe, atol=1e-2)
        x = (v - hi.lo[i]) / (hi.hi[i] - hi.lo[i])
        gm = _sklearn(x, hi, i)
        o = np.argsort(gm.means_.ravel())
        np.testing.assert_allclose(hi.means[i], gm.means_.ravel()[o], atol=1e-3)
        np.testing.assert_allclose(ph, gm.predict_proba(x[:, None])[:, o[0]], atol=1e-2)
    # well separated label matrix: identical clean decisions, and equal to the simulated truth
    losses, given, noisy = _groups_and_matrix(rng)
    known = given >= 0
    p_h = clean_posterior(losses, given, fit_label_gmms(losses, given))   # default: histogram
    p_e = clean_posterior(losses, given, fit_label_gmms(losses, given, em="exact"))
    np.testing.assert_array_equal(p_h[known] > 0.5, p_e[known] > 0.5)
    np.testing.assert_array_equal(p_h[known] > 0.5, ~noisy[known])
    assert np.nanmax(np.abs(p_h - p_e)) < 1e-2


def test_fast_label_pass_equals_generic_pass(monkeypatch):
    # the numpy passes of fit_label_gmms (float32 index arithmetic, tiny sub-chunks, NaN /
    # inf in known and unknown cells) give the same statistics as the generic torch passes
    monkeypatch.setattr(gmm, "_SUB_CELLS", 64)
    rng = np.random.default_rng(6)
    losses, given, _ = _groups_and_matrix(rng, N=500, K=3)
    losses[3, 0], losses[40, 1], losses[41, 2] = np.nan, np.inf, -np.inf
    given[3, 0] = given[40, 1] = given[41, 2] = 1
    unk = given == -1
    losses[unk] = np.where(rng.random(unk.sum()) < 0.5, np.nan, -1e30)   # garbage in unknown cells
    for bins in (16, 1024):
        fit = fit_label_gmms(losses, given, chunk_rows=37, bins=bins, em="histogram").flat()
        groups = [losses[:, k][given[:, k] == z] for k in range(3) for z in (0, 1)]
        ref = fit_gmm_groups(groups, bins=bins, em="histogram")
        np.testing.assert_array_equal(fit.lo, ref.lo)
        np.testing.assert_array_equal(fit.hi, ref.hi)
        np.testing.assert_array_equal(fit.n_cells, ref.n_cells)
        np.testing.assert_array_equal(fit.n_nonfinite, ref.n_nonfinite)
        assert fit.n_nonfinite.sum() == 3
        np.testing.assert_allclose(fit.means, ref.means, atol=1e-6)
        np.testing.assert_allclose(fit.init_means, ref.init_means, atol=1e-6)


def test_fast_label_pass_ill_conditioned_range():
    # values far from 0 relative to their spread: the bin index needs float64 arithmetic
    rng = np.random.default_rng(7)
    losses, given, _ = _groups_and_matrix(rng, N=400, K=2)
    shifted = (losses.astype(np.float64) + 1e4).astype(np.float32)
    fit = fit_label_gmms(shifted, given).flat()
    groups = [shifted[:, k][given[:, k] == z] for k in range(2) for z in (0, 1)]
    ref = fit_gmm_groups(groups, em="histogram")
    np.testing.assert_array_equal(fit.n_cells, ref.n_cells)
    np.testing.assert_allclose(fit.means, ref.means, atol=1e-6)


def test_histogram_hand_computed():
    # 1-bin-per-value data: with bins = 4 the values 0, 1/3, 2/3, 1 fall in bins 0, 1, 2, 3
    # (x = 1 goes to the last bin); counts 5, 0, 0, 3 -> Otsu split between 0 and 1.
    v = np.array([0.0] * 5 + [3.0] * 3)
    fit = fit_gmm_groups([v], bins=4, em="histogram", min_cells=2)
    st = gmm._stats_chunks(lambda: [(torch.tensor(v), torch.zeros(8, dtype=torch.long))], 1, 4, torch.device("cpu"))
    np.testing.assert_array_equal(st.hist, [[5, 0, 0, 3]])
    # init: clusters at bin centres 1/8 and 7/8, variance = Sheppard term h^2/12 + reg_covar
    np.testing.assert_allclose(fit.init_means[0], [0.125, 0.875], atol=1e-12)
    np.testing.assert_allclose(fit.init_vars[0], [1 / 16 / 12 + 5e-4] * 2, atol=1e-12)
    np.testing.assert_allclose(fit.init_weights[0], [5 / 8, 3 / 8], atol=1e-12)


def test_tiny_range_group_beside_a_wide_one():
    """A class whose negatives' losses span 1e-17..5e-10 (a saturated head) next to
    positives at 22..33: the histogram fit must not lose precision in float32 (it made
    negative bin indices) and must agree with the exact fit."""
    rng = np.random.default_rng(0)
    z = np.zeros((3000, 1), np.int8)
    z[:140] = 1
    losses = np.where(z == 1, rng.uniform(22, 33, z.shape), rng.uniform(1e-17, 5e-10, z.shape)).astype(np.float32)
    hist = fit_label_gmms(losses, z)
    exact = fit_label_gmms(losses, z, em="exact")
    assert (hist.n_cells.ravel() == [2860, 140]).all()
    np.testing.assert_allclose(hist.means, exact.means, atol=1e-3)
