"""Review in batches: does ranking with the reviewer's decisions so far raise the precision
of what a person is shown?

For each finished run (the first round's run of ``labelfix demo`` folders, and the cross-fitted runs that
``benchmarks/detection.py`` left under ``DIR/<dataset>/<mode>/runs/<noise>/seed<s>/labelfix``),
with the true labels the benchmark knows: the suggestions ``labelfix clean`` makes (default
score), then a simulated reviewer who decides the ``--budget`` top suggestions, ``--batch`` at
a time, answering with the truth. Between batches the remaining suggestions are ranked as
``labelfix clean`` ranks them after decisions (``labelfix.cleaning.calibration.
decision_weights`` / ``reweight_scores``, one column per ``--priors`` value, and one with a
single weight per direction for the first prior), against the same reviewer without
learning (the plain top ``--budget``). Reported: the share of the reviewed suggestions that
were right. The demo run of seed 0 is where the prior was chosen; the summary line is over
the other runs.

Run: ``python benchmarks/review_loop.py [--demo DEMO_DIR ...] [DIR ...] [--batch 100] [--budget 300]
[--priors 1,5,20,50] [--name review_loop]``. Writes ``benchmarks/results/<name>.json`` and ``.md``.
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


def suggestions(run_dir: Path, truth_path: Path):
    """(corrections frame of ``find_label_issues`` with the default score, bool right per row)."""
    from labelfix.cleaning import find_label_issues
    from labelfix.cleaning.clean_run import run_evidence
    from labelfix.io import read_labels
    from labelfix.run import Run

    run = Run(run_dir)
    evidence = run_evidence(run)
    issues = find_label_issues(**evidence, neighbours=run.cell("neighbours", required=False))
    c = issues.corrections
    true = np.asarray(read_labels(truth_path).labels)
    return c, true[c["image_index"].to_numpy(), c["class_index"].to_numpy()] == c["suggested"].to_numpy()


def review(score: np.ndarray, is_add: np.ndarray, classes: np.ndarray, right: np.ndarray, *, budget: int,
           batch: int, prior: float | None, class_prior: float | None = None) -> float:
    """Share right among the ``budget`` suggestions a reviewer decides ``batch`` at a time;
    ``prior`` None: no learning (the plain ranking); ``class_prior`` inf: one weight per
    direction (``decision_weights``)."""
    from labelfix.cleaning.calibration import decision_weights, reweight_scores

    decided = np.zeros(len(score), dtype=bool)
    current = score
    while decided.sum() < min(budget, len(score)):
        open_rows = np.flatnonzero(~decided)
        take = open_rows[np.argsort(-current[open_rows], kind="stable")][:min(batch, budget - int(decided.sum()))]
        decided[take] = True
        if prior is not None:
            w = decision_weights(score[decided], is_add[decided], right[decided], classes[decided],
                                 int(classes.max()) + 1, prior=prior, class_prior=class_prior)
            current = reweight_scores(score, np.where(is_add, 0, 1), w, classes)
    return float(right[decided].mean())


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """The runs :func:`runs_of` walks: detection benchmark folders and ``--demo`` folders."""
    ap.add_argument("dirs", nargs="*", help="output folders of benchmarks/detection.py")
    ap.add_argument("--demo", action="append", default=[],
                    help="a `labelfix demo` output folder (its first round's run; seed 0 is the choice run); "
                         "repeatable")


def runs_of(args):
    from labelfix.run import Run

    for demo in map(Path, args.demo):
        run = demo / "run1" if (demo / "run1").exists() else demo / "run"
        seed = int(Run(run).config.get("train", {}).get("seed", 0))
        yield "demo", "random", "mislabel_0.4", seed, run, demo / "data" / "train.json"
    for d in args.dirs:
        root = Path(d)
        for run in sorted(root.glob("*/*/runs/*/seed*/labelfix")):
            if (run / "cells" / "score.npy").exists():
                s = run.parent
                yield (s.parents[3].name, s.parents[2].name, s.parent.name, int(s.name[4:]), run,
                       root / "data" / s.parents[3].name / "train.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--priors", default="20", help="comma-separated DECISION_PRIOR values to compare")
    ap.add_argument("--name", default="review_loop")
    args = ap.parse_args(argv)
    priors = [float(p) for p in args.priors.split(",")]
    t0 = time.perf_counter()
    rows = []
    for dataset, mode, noise, seed, run, truth in runs_of(args):
        c, right = suggestions(run, truth)
        score = c["score"].to_numpy(np.float64)
        is_add = (c["action"] == "add").to_numpy()
        classes = c["class_index"].to_numpy()
        row = {"dataset": dataset, "mode": mode, "noise": noise, "seed": seed, "suggestions": len(c),
               "plain": review(score, is_add, classes, right, budget=args.budget, batch=args.batch, prior=None)}
        row[f"per direction (prior {priors[0]:g})"] = review(score, is_add, classes, right, budget=args.budget,
                                                             batch=args.batch, prior=priors[0], class_prior=np.inf)
        for p in priors:
            row[f"learned (prior {p:g})"] = review(score, is_add, classes, right, budget=args.budget, batch=args.batch,
                                                   prior=p)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit("no run found: give --demo and / or detection benchmark folders")
    frame = pd.DataFrame(rows)
    cols = [c for c in frame.columns if c == "plain" or c.startswith(("learned", "per direction"))]
    main_col = f"learned (prior {priors[0]:g})"
    frame["gain"] = frame[main_col] - frame["plain"]
    lines = ["| dataset | mode | noise | seed | suggestions | " + " | ".join(cols) + " | gain |",
             "|---|---|---|---|---|" + "---|" * (len(cols) + 1)]
    for _, r in frame.iterrows():
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['noise']} | {r['seed']} | {r['suggestions']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['gain']:+.3f} |")
    others = frame[~((frame["dataset"] == "demo") & (frame["seed"] == 0))]
    direction_col = f"per direction (prior {priors[0]:g})"
    vs_direction = others[main_col] - others[direction_col]
    text = (f"# Review in batches: precision of the reviewed suggestions\n\nA simulated reviewer decides the top "
            f"{args.budget} suggestions (default score), {args.batch} at a time; `plain`: ranked by the score "
            f"alone; `learned`: after each batch the rest are ranked as `labelfix clean` ranks them with the "
            f"decisions so far, per class and direction; `per direction`: one weight per direction. The demo run "
            f"of seed 0 is where the prior was chosen; the summary is over the other runs.\n\n" + "\n".join(lines)
            + f"\n\nOther runs ({len(others)}): plain {others['plain'].mean():.3f}, {main_col} "
            f"{others[main_col].mean():.3f}; better in {int((others['gain'] > 0).sum())}, equal in "
            f"{int((others['gain'] == 0).sum())}, worse in {int((others['gain'] < 0).sum())} (largest loss "
            f"{others['gain'].min():+.3f}). Per class against one weight per direction ({direction_col} "
            f"{others[direction_col].mean():.3f}): better in {int((vs_direction > 0).sum())}, equal in "
            f"{int((vs_direction == 0).sum())}, worse in {int((vs_direction < 0).sum())}.\n\nCommand: `python benchmarks/review_loop.py "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}` ({time.perf_counter() - t0:.0f} s).\n")
    write_results(args.name, frame, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
