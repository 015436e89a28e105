"""The ``labelfix clean`` report: one HTML page (``RUN/report/index.html``) with PNG
plots and JPEG thumbnails next to it.

- summary, and the estimated precision of the top 50 / 100 / 300 / all suggestions:
  the mean probability that the suggested label is right, from the model's calibrated
  held-out probability of the class (``probability`` for an addition, ``1 -
  probability`` for a removal); an estimate, not a measurement;
- the top ``TOP_THUMBNAILS`` suggestions as cards: thumbnail of the image
  (``report/thumbs/<image_id>.jpg``), ``+ class`` / ``- class``, score, probability;
- a per-class table: suggestions, additions, removals, estimated precision;
- plots (constrained layout, so titles and tick labels do not overlap): suggestions per
  class and action, estimated noise rate per class, score distributions by given state,
  per-class loss histograms with the fitted GMM densities for the classes with the most
  suggestions (at most ``MAX_CLASS_PLOTS``).
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
TOP_THUMBNAILS = 50
THUMB_SIZE = 128  # longest side in pixels (small images are enlarged to it)
PRECISION_AT = (50, 100, 300)
ESTIMATE_NOTE = (
    "Estimated precision = the mean, over the suggestions, of the probability that the suggested label is "
    "right: the held-out probability of the class calibrated per class against the given labels (Platt "
    "scaling) for an addition, one minus it for a removal. It is an estimate, not a measurement, and an "
    "optimistic one (docs/cleaning.md): check it against your own review of a sample."
)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _figure().close(fig)
    return path.name


def right_probability(corrections: pd.DataFrame, calibration: dict | None = None) -> np.ndarray:
    """Per suggestion, the probability that the suggested label is right: ``probability``
    for an addition, ``1 - probability`` for a removal (NaN when the probability is
    missing). ``calibration``: class name -> (a, b) of
    :func:`labelfix.cleaning.calibration.fit_platt`, applied to ``probability`` first
    (classes not in it stay as they are)."""
    if "probability" not in corrections.columns:
        return np.full(len(corrections), np.nan)
    p = pd.to_numeric(corrections["probability"], errors="coerce").to_numpy(np.float64)
    if calibration:
        from labelfix.cleaning.calibration import apply_platt

        # one (a, b) per distinct class, not a tuple per suggestion (4.6 M suggestions at
        # 200,000 x 1,000: the report's peak memory and most of its minutes)
        codes, names = pd.factorize(corrections["class"])   # a Categorical column: its codes, no strings
        params = np.array([calibration.get(str(n), (1.0, 0.0)) for n in names], dtype=np.float64).reshape(-1, 2)
        p = apply_platt(p, codes, params)
    return np.where(corrections["action"].to_numpy() == "add", p, 1.0 - p)


def estimated_precision(corrections: pd.DataFrame, at=PRECISION_AT, calibration: dict | None = None) -> pd.DataFrame:
    """Estimated precision of the top-N suggestions (corrections sorted by score):
    one row per N in ``at`` below the number of suggestions, plus ``all``. Columns
    ``top``, ``suggestions``, ``with_probability``, ``estimated_precision``,
    ``expected_right``. ``calibration``: as in :func:`right_probability`."""
    right = right_probability(corrections, calibration)
    rows = []
    n = len(corrections)
    for top in [k for k in at if k < n] + [n]:
        r = right[:top]
        ok = np.isfinite(r)
        rows.append({
            "top": f"top {top}" if top < n else f"all ({n})",
            "suggestions": int(top),
            "with_probability": int(ok.sum()),
            "estimated_precision": float(r[ok].mean()) if ok.any() else float("nan"),
            "expected_right": float(r[ok].sum()),
        })
    return pd.DataFrame(rows)


def decision_estimate(corrections: pd.DataFrame, decisions: pd.Series, at=PRECISION_AT) -> pd.DataFrame | None:
    """Estimated precision of the next undecided suggestions, from the reviewer's own
    decisions (:func:`labelfix.cleaning.calibration.decision_precision_model` fitted on
    the decided rows' scores and directions): one row per N in ``at`` below the number of
    undecided suggestions, plus ``all``, columns as :func:`estimated_precision`; None with
    too few decisions. ``attrs["note"]``: one line for clean's notes; ``attrs["decided"]``,
    ``attrs["accepted"]``: the counts.

    Args:
        corrections: the corrections table in its order (score, action).
        decisions: per row True / False / None (:func:`labelfix.review.decisions.table_decisions`).
    """
    from labelfix.cleaning.calibration import decision_precision_model

    decided = decisions.notna().to_numpy()
    score = pd.to_numeric(corrections["score"], errors="coerce").to_numpy(np.float64)
    is_add = (corrections["action"] == "add").to_numpy()
    accepted = decisions[decided].astype(bool).to_numpy()
    model = decision_precision_model(score[decided], is_add[decided], accepted)
    if model is None or decided.all():
        return None
    right = model(score[~decided], is_add[~decided])
    n = int((~decided).sum())
    rows = [{"top": f"next {top}" if top < n else f"all undecided ({n})", "suggestions": int(top),
             "with_probability": int(top), "estimated_precision": float(right[:top].mean()),
             "expected_right": float(right[:top].sum())} for top in [k for k in at if k < n] + [n]]
    out = pd.DataFrame(rows)
    hundred = out[out["suggestions"] == 100]
    first = hundred.iloc[0] if len(hundred) else out.iloc[-1]   # the next 100, or all when fewer are left
    which = f"next {first['suggestions']}" if first["suggestions"] < n else f"{n}"
    out.attrs.update(decided=int(decided.sum()), accepted=int(accepted.sum()), note=(
        f"your {int(decided.sum())} decisions so far: {int(accepted.sum())} accepted ({accepted.mean():.2f}); "
        f"estimated from them, {first['estimated_precision']:.2f} of the {which} undecided suggestions are right "
        f"(when it falls, export and train the next round: docs/review.md)"))
    return out


def per_class_table(corrections: pd.DataFrame, calibration: dict | None = None) -> pd.DataFrame:
    """Per class with suggestions: suggestions, additions, removals and the estimated
    precision of its suggestions (``calibration`` as in :func:`right_probability`); most
    suggestions first (ties: class name)."""
    if not len(corrections):
        return pd.DataFrame(columns=["class", "suggestions", "additions", "removals", "estimated_precision"])
    codes, names = pd.factorize(corrections["class"])   # counted by code: no string per suggestion
    right = right_probability(corrections, calibration)
    ok = np.isfinite(right)
    k = len(names)
    with np.errstate(invalid="ignore"):   # a class without a probability: NaN, as a mean of nothing
        precision = (np.bincount(codes[ok], weights=right[ok], minlength=k)
                     / np.bincount(codes[ok], minlength=k))
    out = pd.DataFrame({
        "class": [str(n) for n in names],
        "suggestions": np.bincount(codes, minlength=k),
        "additions": np.bincount(codes, weights=(corrections["action"] == "add").to_numpy(), minlength=k).astype(int),
        "estimated_precision": precision,
    })
    out["removals"] = out["suggestions"] - out["additions"]
    out = out[["class", "suggestions", "additions", "removals", "estimated_precision"]]
    return out.sort_values(["suggestions", "class"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _thumbnail(src: Path, dst: Path, root: Path | None = None) -> bool:
    """Write a JPEG thumbnail (longest side THUMB_SIZE) of ``src`` (read as
    :func:`labelfix.data.image.load_rgb` reads it below ``root``); False if unreadable."""
    from PIL import Image

    from labelfix.data.image import DECODE_ERRORS, load_rgb

    try:
        im = load_rgb(src, root)
    except DECODE_ERRORS:
        return False
    scale = THUMB_SIZE / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    with atomic.atomic_path(dst) as tmp:
        im.save(tmp, format="JPEG", quality=85)
    return True


def _cards(run, corrections: pd.DataFrame, out: Path, calibration: dict | None = None) -> str:
    """HTML cards for the top suggestions, with thumbnails written to ``out/thumbs``."""
    top = corrections.head(TOP_THUMBNAILS)
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    ls = run.labelset
    row_of = ls.image_rows()
    made: dict[int, str | None] = {}
    for rec in top.itertuples(index=False):
        iid = int(rec.image_id)
        if iid in made:
            continue
        name = f"{iid}.jpg"
        ok = iid in row_of.index and _thumbnail(ls.image_path(int(row_of.loc[iid])), thumbs / name, ls.image_root)
        made[iid] = f"thumbs/{name}" if ok else None
    keep = {Path(v).name for v in made.values() if v}
    for old in thumbs.glob("*.jpg"):  # thumbnails of an earlier report
        if old.name not in keep:
            atomic.remove(old)   # with the rest of the report (clean writes one output set)
    right = right_probability(top, calibration)
    cards = []
    for i, rec in enumerate(top.to_dict("records")):
        add = rec["action"] == "add"
        src = made.get(int(rec["image_id"]))
        img = (f"<img src='{html.escape(src)}' alt='image {int(rec['image_id'])}'>" if src
               else "<div class='missing'>image not readable</div>")
        prob = rec.get("probability")
        prob = f"{float(prob):.2f}" if prob not in (None, "") and np.isfinite(float(prob)) else "n/a"
        est = f"{right[i]:.2f}" if np.isfinite(right[i]) else "n/a"
        cards.append(
            f"<figure class='card {'add' if add else 'remove'}'>{img}<figcaption>"
            f"<b class='sugg'>{'+' if add else '&minus;'} {html.escape(str(rec['class']))}</b>"
            f"<span>{'add' if add else 'remove'} &middot; score {float(rec['score']):.3f}</span>"
            f"<span>given {html.escape(str(rec.get('given', '')))} &middot; p(class) {prob} &middot; "
            f"p(right) {est}</span>"
            f"<span class='file' title='{html.escape(str(rec['file_name']))}'>#{i + 1} image "
            f"{int(rec['image_id'])} &middot; {html.escape(str(rec['file_name']))}</span>"
            "</figcaption></figure>"
        )
    return "<div class='cards'>" + "".join(cards) + "</div>"


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


def write_report(run, issues, corrections: pd.DataFrame, notes: list[str], *, losses=None, probs=None,
                 from_decisions: pd.DataFrame | None = None) -> Path:
    """Write ``RUN/report/index.html`` and its PNG plots; returns the HTML path.
    ``from_decisions``: :func:`decision_estimate`'s table, shown beside the estimate from
    the given labels."""
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
    fig, ax = plt.subplots(figsize=(min(max(7, 0.3 * len(top) + 2), 16), 4.2), layout="constrained")
    if len(top):
        counts.loc[top].plot.bar(ax=ax, stacked=True, color=["tab:green", "tab:red"])
    ax.set_title(f"Suggestions per class (the {len(top)} classes with the most, of {ls.num_classes})")
    ax.set_ylabel("suggestions")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=90)
    images.append(("Suggestions per class and action", _save(fig, out / "suggestions_per_class.png")))

    # estimated noise rate per class
    pos_rate, neg_rate = _noise_rates(ls.labels, issues.state)
    order = np.argsort(-np.nan_to_num(pos_rate))[:40]
    fig, ax = plt.subplots(figsize=(min(max(7, 0.3 * len(order) + 2), 16), 4.2), layout="constrained")
    x = np.arange(len(order))
    ax.bar(x - 0.2, pos_rate[order], 0.4, label="given 1 not clean")
    ax.bar(x + 0.2, neg_rate[order], 0.4, label="given 0 not clean")
    ax.set_xticks(x, [names[i] for i in order], rotation=90)
    ax.set_ylabel("share of cells")
    ax.set_title("Estimated noise rate per class (share of given labels that are not clean)")
    ax.legend()
    images.append(("Estimated noise rate per class", _save(fig, out / "noise_rate_per_class.png")))

    # score distributions
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for state, label in ((POS, "given 1"), (NEG, "given 0"), (UNK, "unknown")):
        vals = score[given == state]
        if vals.size:
            ax.hist(vals, bins=50, range=(0, 1), histtype="step", density=True, label=f"{label} ({vals.size})")
    ax.set_xlabel("issue score")
    ax.set_yscale("log")
    ax.legend()
    ax.set_ylabel("density (log scale)")
    ax.set_title("Issue score distribution by given label (sampled cells)")
    images.append(("Score distributions", _save(fig, out / "score_distribution.png")))

    # per-class loss histograms with the fitted GMMs
    fit = issues.gmms
    chosen = list(counts.sum(axis=1).sort_values(ascending=False).index[:MAX_CLASS_PLOTS]) or names[:MAX_CLASS_PLOTS]
    cols = 4
    nrows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, chosen):
        k = names.index(name)
        for z, colour, label in ((1, "tab:blue", "given 1"), (0, "tab:orange", "given 0")):
            vals = loss[given[:, k] == z, k]
            vals = vals[np.isfinite(vals)]
            if not vals.size:
                continue
            ax.hist(vals, bins=40, density=True, histtype="stepfilled", alpha=0.35, color=colour, label=label)
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
    fig.suptitle("Per-class loss histograms and fitted GMMs (classes with the most suggestions)", fontsize=11)
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
    from labelfix.cleaning.calibration import fit_platt

    sample_probs = np.asarray(probs[rows], np.float64) if probs is not None else None
    calibration = (dict(zip(names, map(tuple, fit_platt(sample_probs, given))))
                   if sample_probs is not None else None)
    precision = estimated_precision(corrections, calibration=calibration)
    classes = per_class_table(corrections, calibration)
    cards = _cards(run, corrections, out, calibration)

    def fmt(v):
        return "n/a" if isinstance(v, float) and not np.isfinite(v) else f"{v:.3f}" if isinstance(v, float) else v

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>labelfix clean report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}"
        "td,th{padding:3px 10px;text-align:left}table.data{border-collapse:collapse}"
        "table.data td,table.data th{border-bottom:1px solid #ddd}table.data td.n{text-align:right}"
        ".scroll{max-height:420px;overflow-y:auto;display:inline-block;border:1px solid #eee}"
        "img.plot{max-width:100%;border:1px solid #ddd}"
        ".cards{display:flex;flex-wrap:wrap;gap:10px}"
        ".card{margin:0;width:212px;box-sizing:border-box;border:1px solid #ccc;border-top:5px solid;border-radius:4px;padding:6px;"
        "font-size:12px;background:#fafafa}.card.add{border-top-color:#2ca02c}.card.remove{border-top-color:#d62728}"
        ".card img{display:block;width:128px;height:128px;object-fit:contain;margin:0 auto 4px;background:#000}"
        ".card .missing{width:128px;height:128px;margin:0 auto 4px;background:#eee;display:flex;align-items:center;"
        "justify-content:center;color:#888}.card figcaption span{display:block;color:#444}"
        ".card .sugg{font-size:15px}.card.add .sugg{color:#1a7f1a}.card.remove .sugg{color:#b51f1f}"
        ".card .file{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:#777}"
        ".note{color:#555;max-width:900px}</style></head><body>",
        f"<h1>labelfix clean: {html.escape(run.path.name)}</h1><table>",
        *[f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items()],
        "</table>",
    ]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2 id='precision'>Estimated precision of the top suggestions</h2>")
    parts.append("<table class='data'><tr><th>suggestions</th><th>estimated precision</th>"
                 "<th>expected right</th><th>with a probability</th></tr>" + "".join(
                     f"<tr><td>{html.escape(r.top)}</td><td class='n'>{fmt(r.estimated_precision)}</td>"
                     f"<td class='n'>{r.expected_right:.1f}</td><td class='n'>{r.with_probability}</td></tr>"
                     for r in precision.itertuples()) + "</table>")
    parts.append(f"<p class='note'>{html.escape(ESTIMATE_NOTE)}</p>")
    if from_decisions is not None:
        a = from_decisions.attrs
        parts.append("<h2 id='from-decisions'>Estimated from your decisions</h2>")
        parts.append(f"<p class='note'>You decided {a['decided']} suggestions and accepted {a['accepted']}. A "
                     f"logistic regression of your decisions on the score and the direction estimates how many of "
                     f"the undecided suggestions, in the order of corrections.csv, are right: a better guide than "
                     f"the estimate above (docs/review.md).</p>")
        parts.append("<table class='data'><tr><th>undecided suggestions</th><th>estimated precision</th>"
                     "<th>expected right</th></tr>" + "".join(
                         f"<tr><td>{html.escape(r.top)}</td><td class='n'>{fmt(r.estimated_precision)}</td>"
                         f"<td class='n'>{r.expected_right:.1f}</td></tr>" for r in from_decisions.itertuples())
                     + "</table>")
    parts.append(f"<h2 id='top'>Top {min(TOP_THUMBNAILS, len(corrections))} suggestions</h2>")
    parts.append("<p class='note'>Highest score first. <b style='color:#1a7f1a'>+ class</b>: add the label "
                 "(given 0 or unknown); <b style='color:#b51f1f'>&minus; class</b>: remove it (given 1). "
                 "p(class): the model's probability of the class; p(right): the probability that the "
                 "suggestion is right. All suggestions are in corrections.csv.</p>")
    parts.append(cards)
    parts.append("<h2 id='classes'>Suggestions per class</h2>")
    parts.append("<div class='scroll'><table class='data'><tr><th>class</th><th>suggestions</th><th>additions</th>"
                 "<th>removals</th><th>estimated precision</th></tr>" + "".join(
                     f"<tr><td>{html.escape(str(r['class']))}</td><td class='n'>{int(r['suggestions'])}</td>"
                     f"<td class='n'>{int(r['additions'])}</td><td class='n'>{int(r['removals'])}</td>"
                     f"<td class='n'>{fmt(float(r['estimated_precision']))}</td></tr>"
                     for r in classes.to_dict("records")) + "</table></div>")
    for title, name in images:
        parts.append(f"<h2>{html.escape(title)}</h2><img class='plot' src='{html.escape(name)}' "
                     f"alt='{html.escape(title)}'>")
    parts.append("</body></html>")
    path = out / "index.html"
    atomic.write_text(path, "\n".join(parts))
    return path
