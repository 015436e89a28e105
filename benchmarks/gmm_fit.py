"""Batched label-wise GMM fit vs a loop of sklearn GaussianMixture fits.

N = 100,000 images x K = 80 classes of synthetic per-cell losses (2K = 160 groups).
Both sides use the DivideMix settings (max_iter 10, tol 1e-2, reg_covar 5e-4) on the
same min-max normalised data and the same initial parameters (sklearn receives ours via
means_init / precisions_init / weights_init; it still runs its k-means init first, whose
result it then overrides, as in any DivideMix-style loop). Writes
benchmarks/results/gmm_fit.json.

    .venv/bin/python benchmarks/gmm_fit.py [--n 100000] [--k 80]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from labelfix.cleaning.gmm import fit_label_gmms
from labelfix.io.atomic import write_json


def make_data(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    given = (rng.random((n, k)) < rng.uniform(0.02, 0.3, k)).astype(np.int8)
    given[rng.random((n, k)) < 0.1] = -1
    noisy = rng.random((n, k)) < 0.1
    losses = np.where(noisy, rng.normal(2.5, 0.6, (n, k)), rng.gamma(2.0, 0.08, (n, k)))
    return np.abs(losses).astype(np.float32), given


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=80)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gmm_fit.json"))
    args = ap.parse_args()
    losses, given = make_data(args.n, args.k)
    rss0 = peak_rss_mb()

    timings = {}
    fits = {}
    for em in ("exact", "histogram"):
        t = time.perf_counter()
        fits[em] = fit_label_gmms(losses, given, em=em)
        timings[em] = time.perf_counter() - t
    rss_batched = peak_rss_mb()

    fit = fits["exact"].flat()
    t = time.perf_counter()
    max_mean_diff = 0.0
    max_var_diff = 0.0
    n_fits = 0
    for kk in range(args.k):
        for z in (0, 1):
            gi = 2 * kk + z
            x = losses[given[:, kk] == z, kk].astype(np.float64)
            x = (x - x.min()) / (x.max() - x.min())
            gm = GaussianMixture(2, covariance_type="full", max_iter=10, tol=1e-2, reg_covar=5e-4,
                                 means_init=fit.init_means[gi][:, None],
                                 precisions_init=(1.0 / fit.init_vars[gi])[:, None, None],
                                 weights_init=fit.init_weights[gi])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm.fit(x[:, None])
            n_fits += 1
            o = np.argsort(gm.means_.ravel())
            max_mean_diff = max(max_mean_diff, float(np.abs(gm.means_.ravel()[o] - fit.means[gi]).max()))
            max_var_diff = max(max_var_diff, float(np.abs(gm.covariances_.ravel()[o] - fit.vars[gi]).max()))
    t_sklearn = time.perf_counter() - t
    hist = fits["histogram"].flat()
    result = {
        "n": args.n, "k": args.k, "groups": 2 * args.k, "known_cells": int((given >= 0).sum()),
        "sklearn_fits": n_fits,
        "seconds": {"batched_exact": timings["exact"], "batched_histogram": timings["histogram"],
                    "sklearn_loop": t_sklearn},
        "speedup": {"exact": t_sklearn / timings["exact"], "histogram": t_sklearn / timings["histogram"]},
        "agreement": {"exact_vs_sklearn_max_abs_mean": max_mean_diff,
                      "exact_vs_sklearn_max_abs_var": max_var_diff,
                      "histogram_vs_exact_max_abs_mean": float(np.nanmax(np.abs(hist.means - fit.means)))},
        "peak_rss_mb": {"after_data": rss0, "after_batched_fits": rss_batched, "end": peak_rss_mb()},
        "device": "cpu", "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
