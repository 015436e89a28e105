"""Batched label-wise GMMs vs sklearn.mixture.GaussianMixture (same init, same rules)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

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


@pytest.mark.parametrize("em,atol", [("exact", 1e-9), ("histogram", 1e-5)])
def test_matches_sklearn_same_init(em, atol):
    rng = np.random.default_rng(0)
    groups = [_bimodal(rng, 900, 100), _bimodal(rng, 400, 300, loc=1.0), rng.random(500), rng.normal(0, 1, 300)]
    fit = fit_gmm_groups(groups, em=em)
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
    fit = fit_label_gmms(losses, given, chunk_rows=37)
    assert fit.means.shape == (K, 2, 2) and fit.lo.shape == (K, 2)
    groups = [losses[:, k][given[:, k] == z] for k in range(K) for z in (0, 1)]
    flat = fit_gmm_groups(groups)
    np.testing.assert_allclose(fit.flat().means, flat.means, atol=1e-10)
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
    a = fit_label_gmms(np.load(tmp_path / "l.npy", mmap_mode="r"), np.load(tmp_path / "g.npy", mmap_mode="r"),
                       chunk_rows=16)
    b = fit_label_gmms(losses.astype(np.float64), given)
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
