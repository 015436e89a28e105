"""`labelfix.find_label_issues` against cleanlab for a user who brings their own model
outputs: the same out-of-sample probabilities, with and without the images' features.

Data: scikit-learn's multi-label generator (``make_multilabel_classification``; 2,000
samples, 20 features, 6 or 20 classes, 2 labels per sample on average), whose labels are
then corrupted: ``flip`` turns each cell with probability r (3, 10, 20 %), ``missing``
turns each positive into a negative with probability 0.3 (incomplete labels; both methods
see them as negatives). Probabilities: 5-fold cross-validated one-vs-rest logistic
regression on the noisy labels (``cross_val_predict``), the usual way to get
out-of-sample ``pred_probs`` for cleanlab. The features are the generator's 20 features.

Per run, every method ranks the N x K cells and flags a set:

- cleanlab: ranking by ``multilabel_classification.rank.get_label_quality_scores_per_class``
  (self-confidence), flags from ``filter.find_multilabel_issues_per_class``;
- labelfix: ``find_label_issues(noisy, probs)`` (its default score; probabilities only);
- labelfix + features: ``find_label_issues(noisy, probs, features=X)`` (the neighbours'
  label vote from the features, docs/cleaning.md "Evidence from similar images").

Reported: the cells' average precision for the wrong cells; flagging as the detection
benchmark measures it (cleanlab's flagged set against the precision of a ranking walked down
to the same recall: labelfix + features', and cleanlab's own ranking, which already beats
its flagged set, so the fair comparison is ranking against ranking); and each method's own
flagged set (labelfix: the cells whose suggestion differs from the given label,
``corrections``; the features change the ranking, not the suggestions) with its precision,
recall and F1. Nothing is chosen here: every method runs with its defaults.

Run: ``python benchmarks/api_vs_cleanlab.py [--seeds 0,1,2,3,4] [--name api_vs_cleanlab]``.
Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_results  # noqa: E402  (benchmarks/report.py)

DATASETS = {"multilabel-6": 6, "multilabel-20": 20}
NOISES = ("flip:0.03", "flip:0.1", "flip:0.2", "missing:0.3")
METHODS = ("cleanlab", "labelfix", "labelfix+features")
#: other scoring rules of find_label_issues, ranked on the probabilities only (second table)
OTHER_SCORERS = ("posterior", "gmm")


def make_data(classes: int, noise: str, seed: int, n: int = 2000):
    """(features float32 (N, 20), true int8 (N, K), noisy int8 (N, K)) of one run."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=n, n_features=20, n_classes=classes, n_labels=2,
                                          allow_unlabeled=True, random_state=seed)
    kind, rate = noise.split(":")
    rng = np.random.default_rng(seed)
    hit = rng.random(y.shape) < float(rate)
    if kind == "missing":
        hit &= y == 1
    noisy = np.where(hit, 1 - y, y)
    return x.astype(np.float32), y.astype(np.int8), noisy.astype(np.int8)


def held_out_probs(x: np.ndarray, noisy: np.ndarray, seed: int) -> np.ndarray:
    """float (N, K) 5-fold cross-validated one-vs-rest logistic regression probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    model = OneVsRestClassifier(LogisticRegression(max_iter=1000))
    return cross_val_predict(model, x, noisy, cv=KFold(5, shuffle=True, random_state=seed), method="predict_proba")


def one_run(dataset: str, noise: str, seed: int) -> list[dict]:
    """One row per method: its AP, its flagged set's precision / recall / F1
    (``labelfix.bench.metrics.detection_metrics``) and its ranking's precision at the
    recall of cleanlab's flagged set (``precision_at_recall``); cleanlab's cells from
    ``labelfix.bench.baselines.cleanlab_issues``, as the detection benchmark takes them."""
    from labelfix import find_label_issues
    from labelfix.bench.baselines import cleanlab_issues
    from labelfix.bench.metrics import detection_metrics, precision_at_recall

    x, true, noisy = make_data(DATASETS[dataset], noise, seed)
    probs = held_out_probs(x, noisy, seed)
    t = time.perf_counter()
    cl = cleanlab_issues(noisy, probs)   # its image-level issues too (in its time)
    seconds = {"cleanlab": time.perf_counter() - t}
    results = {"cleanlab": (cl.score, cl.suggested)}
    for method, extra in (("labelfix", {}), ("labelfix+features", {"features": x}),
                          *((f"labelfix:{name}", {"scorer": name}) for name in OTHER_SCORERS)):
        t = time.perf_counter()
        issues = find_label_issues(noisy, probs, **extra)
        seconds[method] = time.perf_counter() - t
        results[method] = (np.asarray(issues.score), np.asarray(issues.suggested))
    cl_recall = detection_metrics(noisy, true, *results["cleanlab"])["recall"]
    rows = []
    for method, (score, suggested) in results.items():
        m = detection_metrics(noisy, true, score, suggested)
        rows.append({"dataset": dataset, "noise": noise, "seed": seed, "method": method,
                     "wrong_cells": int(m["errors"]), "ap": m["ap"], "flagged": int(m["suggestions"]),
                     "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                     "precision_at_cleanlab_recall": precision_at_recall(noisy, true, score, cl_recall),
                     "seconds": seconds[method]})
    return rows


def summary(frame: pd.DataFrame, seconds: float, command: str) -> str:
    lines = ["# `find_label_issues` against cleanlab on the same probabilities", "",
             "scikit-learn's multi-label generator (2,000 samples, 20 features), 5-fold logistic-regression "
             "probabilities on the noisy labels; means over seeds "
             + ", ".join(map(str, sorted(frame["seed"].unique()))) + ". AP: average precision of the wrong cells "
             "in the method's ranking. At cleanlab's recall: the precision of cleanlab's flagged set, and of two "
             "rankings walked down to the same recall (cleanlab's own, labelfix + features'). Flagged-set F1: each "
             "method's own flagged set (labelfix: its corrections; the features change the ranking, not the "
             "suggestions).", "",
             "| data | noise | AP cleanlab | AP labelfix | AP labelfix + features | cleanlab flagged P / R | "
             "ranking P at that R: cleanlab / labelfix + features | flagged-set F1: cleanlab / labelfix |",
             "|---|---|---|---|---|---|---|---|"]
    mean = frame.groupby(["dataset", "noise", "method"], sort=False).mean(numeric_only=True)
    for (dataset, noise), _ in frame.groupby(["dataset", "noise"], sort=False):
        c, l, f = (mean.loc[(dataset, noise, method)] for method in METHODS)
        lines.append(f"| {dataset} | {noise} | {c['ap']:.3f} | {l['ap']:.3f} | {f['ap']:.3f} | "
                     f"{c['precision']:.3f} / {c['recall']:.3f} | {c['precision_at_cleanlab_recall']:.3f} / "
                     f"{f['precision_at_cleanlab_recall']:.3f} | {c['f1']:.3f} / {l['f1']:.3f} |")
    lines += ["", "Other scoring rules of `find_label_issues` (probabilities only, `scorer=`), AP:", "",
              "| data | noise | cleanlab | labelfix (`evidence`) | " + " | ".join(f"`{n}`" for n in OTHER_SCORERS) + " |",
              "|---|---|---|---|" + "---|" * len(OTHER_SCORERS)]
    for (dataset, noise), _ in frame.groupby(["dataset", "noise"], sort=False):
        aps = [mean.loc[(dataset, noise, m)]["ap"] for m in ("cleanlab", "labelfix", *(f"labelfix:{n}"
                                                                                     for n in OTHER_SCORERS))]
        lines.append(f"| {dataset} | {noise} | " + " | ".join(f"{a:.3f}" for a in aps) + " |")
    per_seed = frame.pivot_table(index=["dataset", "noise", "seed"], columns="method",
                                 values=["ap", "precision_at_cleanlab_recall", "f1"])
    ap, at_r = per_seed["ap"], per_seed["precision_at_cleanlab_recall"]
    gain = ap["labelfix+features"] - ap["cleanlab"]
    prec = at_r["labelfix+features"] - at_r["cleanlab"]
    f1 = per_seed["f1"]["labelfix"] - per_seed["f1"]["cleanlab"]
    by_setting = gain.groupby(level=[0, 1], sort=False).mean()
    lines += ["", f"labelfix + features against cleanlab, AP: {by_setting.min():+.3f} to {by_setting.max():+.3f} "
              f"(setting means), higher in {int((gain > 0).sum())} of {len(gain)} runs, lower in "
              f"{int((gain < 0).sum())}; ranking against ranking at cleanlab's flagged recall at least as precise in "
              f"{int((prec >= 0).sum())} of {len(prec)} runs. Without features labelfix's ranking is cleanlab's (AP "
              f"equal to {(ap['labelfix'] - ap['cleanlab']).abs().max():.0e}); its own flagged set has an F1 "
              f"{f1.mean():+.3f} from cleanlab's on average (range {f1.min():+.3f} to {f1.max():+.3f}).",
              "", f"Time per run (mean): cleanlab {frame[frame.method == 'cleanlab'].seconds.mean():.2f} s (with its "
              f"image-level issues), labelfix "
              f"{frame[frame.method == 'labelfix'].seconds.mean():.2f} s, with features "
              f"{frame[frame.method == 'labelfix+features'].seconds.mean():.2f} s (the neighbour search included).",
              "", f"Command: `{command}` ({seconds:.0f} s on this machine)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--name", default="api_vs_cleanlab")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {args.seeds!r}: expected comma-separated integers") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    t0 = time.perf_counter()
    rows = []
    for dataset in DATASETS:
        for noise in NOISES:
            for seed in seeds:
                rows += one_run(dataset, noise, seed)
                print(f"{dataset} {noise} seed {seed}: " + ", ".join(f"{r['method']} AP {r['ap']:.3f}"
                                                                     for r in rows if r["seed"] == seed
                                                                     and r["noise"] == noise
                                                                     and r["dataset"] == dataset), flush=True)
    frame = pd.DataFrame(rows)
    command = "python benchmarks/api_vs_cleanlab.py" + ("" if args.seeds == "0,1,2,3,4" else f" --seeds {args.seeds}")
    write_results(args.name, frame, summary(frame, time.perf_counter() - t0, command))


if __name__ == "__main__":
    main()
