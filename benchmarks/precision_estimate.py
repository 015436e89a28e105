"""How well does `labelfix clean` estimate the precision of the suggestions a person has
not reviewed yet?

For each finished run (the same runs as ``benchmarks/review_loop.py``: the first round of
``labelfix demo`` folders and the cross-fitted runs of ``benchmarks/detection.py``): the
suggestions ``labelfix clean`` makes (default score), and a simulated reviewer who decides
them ``--batch`` at a time, answering with the true labels, with the rest re-ranked after
each batch as ``labelfix clean`` ranks them (decision_weights / reweight_scores). Before
each batch after the first, three estimates of the share of the next batch that is right:

- ``given labels``: the report's estimate (the held-out probability calibrated per class
  against the given labels, ``labelfix.cleaning.report.right_probability``);
- ``decided share``: the share of the decided suggestions accepted so far;
- ``from decisions``: ``labelfix.cleaning.report.decision_estimate`` (a logistic
  regression of the decisions on score and direction), what clean reports once a person
  has decided suggestions;

against the share of the next batch that is right. Reported: every estimate's mean error
and mean absolute error over all (run, batch) pairs.

Run: ``python benchmarks/precision_estimate.py [--demo DEMO_DIR ...] [DIR ...] [--batch 100]
[--batches 3] [--name precision_estimate]``. Writes ``benchmarks/results/<name>.json`` and ``.md``.
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
from review_loop import add_run_arguments, runs_of  # noqa: E402  (benchmarks/review_loop.py)

ESTIMATES = ("given labels", "decided share", "from decisions")


def replay(run_dir: Path, truth_path: Path, batch: int, batches: int) -> list[dict]:
    """One row per batch after the first: the three estimates of its precision and the truth."""
    from labelfix.cleaning import find_label_issues
    from labelfix.cleaning.calibration import decision_weights, fit_platt, reweight_scores
    from labelfix.cleaning.clean_run import corrections_table, run_evidence
    from labelfix.cleaning.report import _sample_rows, decision_estimate, right_probability
    from labelfix.io import read_labels
    from labelfix.run import Run

    run = Run(run_dir)
    evidence = run_evidence(run)
    issues = find_label_issues(**evidence, neighbours=run.cell("neighbours", required=False))
    c = issues.corrections
    true = np.asarray(read_labels(truth_path).labels)
    right = true[c["image_index"].to_numpy(), c["class_index"].to_numpy()] == c["suggested"].to_numpy()
    table = corrections_table(run, c)
    ls = run.labelset
    sample = _sample_rows(ls.num_images)
    calibration = dict(zip(ls.class_names, map(tuple, fit_platt(np.asarray(evidence["probs"][sample], np.float64),
                                                                  np.asarray(ls.labels[sample])))))
    platt = right_probability(table, calibration)
    score = table["score"].to_numpy(np.float64)
    is_add = (table["action"] == "add").to_numpy()
    classes = c["class_index"].to_numpy()
    decided = np.zeros(len(table), dtype=bool)
    current = score
    rows = []
    for b in range(batches):
        open_rows = np.flatnonzero(~decided)
        take = open_rows[np.argsort(-current[open_rows], kind="stable")][:batch]
        if len(take) < batch:
            break
        if b:   # estimates made before this batch is decided
            order = np.argsort(-current, kind="stable")
            now = table.iloc[order].assign(score=current[order])
            decisions = pd.Series(np.where(decided, right, None)[order], index=now.index, dtype=object)
            est = decision_estimate(now, decisions, at=(batch,))
            rows.append({"batch": b + 1, "decided": int(decided.sum()), "actual": float(right[take].mean()),
                         "given labels": float(np.nanmean(platt[take])),
                         "decided share": float(right[decided].mean()),
                         "from decisions": float(est["estimated_precision"].iloc[0])})
        decided[take] = True
        w = decision_weights(score[decided], is_add[decided], right[decided], classes[decided], true.shape[1])
        current = reweight_scores(score, np.where(is_add, 0, 1), w, classes).astype(np.float64)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--batches", type=int, default=3, help="batches each simulated reviewer decides")
    ap.add_argument("--name", default="precision_estimate")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.batches < 2:
        raise SystemExit("--batch must be at least 1 and --batches at least 2 (the first batch has no estimate)")
    t0 = time.perf_counter()
    rows = []
    for dataset, mode, noise, seed, run, truth in runs_of(args):
        for r in replay(run, truth, args.batch, args.batches):
            rows.append({"dataset": dataset, "mode": mode, "noise": noise, "seed": seed, **r})
            print(rows[-1], file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit("no run found: give --demo and / or detection benchmark folders")
    frame = pd.DataFrame(rows)
    lines = ["| dataset | mode | noise | seed | batch | decided before | actual | " + " | ".join(ESTIMATES) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(ESTIMATES)]
    for r in frame.to_dict("records"):
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['noise']} | {r['seed']} | {r['batch']} | {r['decided']} | "
                     f"{r['actual']:.3f} | " + " | ".join(f"{r[e]:.3f}" for e in ESTIMATES) + " |")
    err = {e: frame[e] - frame["actual"] for e in ESTIMATES}
    summary = "; ".join(f"{e}: mean error {err[e].mean():+.3f}, mean absolute error {err[e].abs().mean():.3f}"
                        for e in ESTIMATES)
    text = (f"# Estimated precision of the next suggestions\n\nA simulated reviewer decides {args.batch} suggestions "
            f"at a time (ranked as `labelfix clean` ranks them after each batch); before each batch after the first, "
            f"three estimates of its precision against the truth.\n\n" + "\n".join(lines)
            + f"\n\nOver {len(frame)} batches of {frame[['dataset', 'mode', 'noise', 'seed']].drop_duplicates().shape[0]} "
            f"runs: {summary}.\n\nCommand: `python benchmarks/precision_estimate.py "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}` ({time.perf_counter() - t0:.0f} s).\n")
    write_results(args.name, frame, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
