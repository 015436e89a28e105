"""The ``labelfix clean`` report: one HTML page with PNG plots.

- per-class loss histograms (given 1 and given 0) with the fitted GMM densities, for the
  classes with the most suggestions (at most ``MAX_CLASS_PLOTS``);
- suggestions per class and action;
- estimated noise rate per class (share of known cells that are not clean);
- score distributions by given state.
Plots are drawn from a row sample (at most ``SAMPLE_ROWS`` images) so that the report of
a 1,000,000-image run costs no more memory than the one of a small run.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.cleaning.states import CLEAN
from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK

MAX_CLASS_PLOTS = 12
SAMPLE_ROWS = 20000


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    _figure().close(fig)
    return path.name


def _sample_rows(n: int, seed: int = 0) -> np.ndarray:
    if n <= SAMPLE_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, SAMPLE_ROWS, replace=False))


def _noise_rates(given, state, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per class: share of given positives / negatives that are not clean."""
    k = given.shape[1]
    pos = np.zeros(k)
    neg = np.zeros(k)
    pos_bad = np.zeros(k)
    neg_bad = np.zeros(k)
    for a in range(0, given.shape[0], chunk):
        g = np.asarray(given[a : a + chunk])
        s = np.asarray(state[a : a + chunk])
        pos += (g == POS).sum(0)
        neg += (g == NEG).sum(0)
        pos_bad += ((g == POS) & (s != CLEAN)).sum(0)
        neg_bad += ((g == NEG) & (s != CLEAN)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pos_bad / pos, neg_bad / neg


def write_report(run, issues, corrections: pd.DataFrame, notes: list[str], *, losses=None, probs=None) -> Path:
    """Write ``RUN/report/index.html`` and its PNG plots; returns the HTML path."""
    from labelfix.cleaning.scores import bce_losses

    plt = _figure()
    out = run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    ls = run.labelset
    names = ls.class_names
    rows = _sample_rows(ls.num_images)
    given = np.asarray(ls.labels[rows])
    loss = np.asarray(losses[rows], np.float32) if losses is not None else bce_losses(np.asarray(probs[rows]), given)
    score = np.asarray(issues.score[rows])
    images = []

    # suggestions per class and action
    counts = corrections.groupby(["class", "action"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["add", "remove"], fill_value=0)
    top = counts.sum(axis=1).sort_values(ascending=False).index[:40]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(top) + 2), 3.5))
    if len(top):
        counts.loc[top].plot.bar(ax=ax, stacked=True, color=["tab:green", "tab:red"])
    ax.set_title(f"suggestions per class (top {len(top)} of {ls.num_classes})")
    ax.set_ylabel("suggestions")
    images.append(("Suggestions per class and action", _save(fig, out / "suggestions_per_class.png")))

    # estimated noise rate per class
    pos_rate, neg_rate = _noise_rates(ls.labels, issues.state)
    order = np.argsort(-np.nan_to_num(pos_rate))[:40]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(order) + 2), 3.5))
    x = np.arange(len(order))
    ax.bar(x - 0.2, pos_rate[order], 0.4, label="given 1 not clean")
    ax.bar(x + 0.2, neg_rate[order], 0.4, label="given 0 not clean")
    ax.set_xticks(x, [names[i] for i in order], rotation=90)
    ax.set_ylabel("share of cells")
    ax.set_title("estimated noise rate per class")
    ax.legend()
    images.append(("Estimated noise rate per class", _save(fig, out / "noise_rate_per_class.png")))

    # score distributions
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, label in ((POS, "given 1"), (NEG, "given 0"), (UNK, "unknown")):
        vals = score[given == state]
        if vals.size:
            ax.hist(vals, bins=50, range=(0, 1), histtype="step", density=True, label=f"{label} ({vals.size})")
    ax.set_xlabel("issue score")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("score distribution (sampled cells)")
    images.append(("Score distributions", _save(fig, out / "score_distribution.png")))

    # per-class loss histograms with the fitted GMMs
    fit = issues.gmms
    chosen = list(counts.sum(axis=1).sort_values(ascending=False).index[:MAX_CLASS_PLOTS]) or names[:MAX_CLASS_PLOTS]
    cols = 4
    nrows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, chosen):
        k = names.index(name)
        for z, colour, label in ((1, "tab:blue", "given 1"), (0, "tab:orange", "given 0")):
            vals = loss[given[:, k] == z, k]
            vals = vals[np.isfinite(vals)]
            if not vals.size:
                continue
            ax.hist(vals, bins=40, density=True, alpha=0.35, color=colour, label=label)
            if fit.degenerate[k, z]:
                continue
            lo, hi = fit.lo[k, z], fit.hi[k, z]
            xs = np.linspace(lo, hi, 200)
            u = (xs - lo) / max(hi - lo, 1e-12)
            dens = np.zeros_like(xs)
            for c in range(2):
                m, v, w = fit.means[k, z, c], fit.vars[k, z, c], fit.weights[k, z, c]
                dens += w * np.exp(-0.5 * (u - m) ** 2 / v) / np.sqrt(2 * np.pi * v)
            ax.plot(xs, dens / max(hi - lo, 1e-12), color=colour, lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("per-class loss histograms and fitted GMMs", fontsize=10)
    images.append(("Loss histograms with the fitted GMMs", _save(fig, out / "loss_gmms.png")))

    summary = {
        "images": ls.num_images,
        "classes": ls.num_classes,
        "suggestions": len(corrections),
        "additions": int((corrections["action"] == "add").sum()),
        "removals": int((corrections["action"] == "remove").sum()),
        "re-labeling threshold (delta)": issues.delta,
        "GMM groups fitted": f"{int((~fit.degenerate).sum())} of {fit.degenerate.size}",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>labelfix clean report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}td,th{padding:2px 8px;text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}</style></head><body>",
        f"<h1>labelfix clean: {html.escape(run.path.name)}</h1><table>",
        *[f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items()],
        "</table>",
    ]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for title, name in images:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{html.escape(name)}' alt='{html.escape(title)}'>")
    parts.append("<h2>Top suggestions</h2>")
    parts.append(corrections.head(50).to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}"))
    parts.append("</body></html>")
    path = out / "index.html"
    atomic.write_text(path, "\n".join(parts))
    return path
