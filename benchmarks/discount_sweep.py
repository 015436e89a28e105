"""How much of a cell's ``evidence`` score should ``evidence_gmm`` take away where the label
GMMs call the cell clean? A sweep of ``labelfix.cleaning.scores.CLEAN_DISCOUNT`` on finished
runs, without retraining.

For each finished run (the first round's run of ``labelfix demo`` folders, and the
cross-fitted runs that ``benchmarks/detection.py`` left in its output folders; the same
runs as ``benchmarks/review_loop.py``): the inputs ``labelfix clean`` scores, the
``evidence`` score and the GMMs' p_clean of the default ``find_label_issues``, and for each
discount d the score ``evidence x (1 - d p_clean)`` on known cells (d = 0 is ``evidence``,
d = ``CLEAN_DISCOUNT`` is ``evidence_gmm``). Reported: the per-cell AP of the label errors
(over the unknown cells where every error is an unknown cell) and the share of the top
``--top`` suggestions that are right (what a reviewer would see first, without learning
from decisions). The demo run of seed 0 is where the discount was chosen.

Run: ``python benchmarks/discount_sweep.py [--demo DEMO_DIR ...] [DIR ...] [--discounts
0,0.25,0.5,0.75,1] [--top 300] [--name discount_sweep]``. Writes
``benchmarks/results/<name>.json`` and ``.md``.
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


def discounted(evidence: np.ndarray, p_clean: np.ndarray, known: np.ndarray, d: float) -> np.ndarray:
    """``evidence_gmm``'s score with discount ``d`` (float32 (N, K)); unknown cells keep
    the evidence score."""
    p = np.where(np.isfinite(p_clean), p_clean, 1.0).astype(np.float32)
    return np.where(known, evidence * (1.0 - np.float32(d) * p), evidence).astype(np.float32)


def sweep(run_dir: Path, truth_path: Path, noise: str, discounts: list[float], top: int) -> dict:
    from labelfix.bench.metrics import detection_metrics, headline_metric, suggestion_cells
    from labelfix.cleaning import find_label_issues
    from labelfix.cleaning.clean_run import run_evidence
    from labelfix.io import read_labels
    from labelfix.labels import UNK
    from labelfix.run import Run

    run = Run(run_dir)
    evidence = run_evidence(run)
    issues = find_label_issues(**evidence, neighbours=run.cell("neighbours", required=False), scorer="evidence")
    given = np.asarray(evidence["given"])
    true = np.asarray(read_labels(truth_path).labels)
    known = given != UNK
    base = np.asarray(issues.score, dtype=np.float32)
    p_clean = np.asarray(issues.p_clean, dtype=np.float32)
    suggested = np.asarray(issues.suggested)
    rows, cols = np.nonzero(suggestion_cells(given, suggested))
    right = suggested[rows, cols] == true[rows, cols]
    metric = headline_metric(noise.split("_")[0])
    out = {}
    for d in discounts:
        score = discounted(base, p_clean, known, d)
        order = np.argsort(-score[rows, cols], kind="stable")[:top]
        out[f"AP d={d:g}"] = detection_metrics(given, true, score)[metric]
        out[f"top{top} d={d:g}"] = float(right[order].mean()) if order.size else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--discounts", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--top", type=int, default=300)
    ap.add_argument("--name", default="discount_sweep")
    args = ap.parse_args(argv)
    try:
        discounts = [float(d) for d in args.discounts.split(",")]
    except ValueError:
        raise SystemExit(f"--discounts: {args.discounts!r}: expected comma-separated numbers") from None
    if not discounts or any(not 0.0 <= d <= 1.0 for d in discounts):
        raise SystemExit(f"--discounts: {args.discounts!r}: every discount must lie in [0, 1]")
    if args.top < 1:
        raise SystemExit(f"--top: {args.top}: must be at least 1")
    t0 = time.perf_counter()
    rows = []
    for dataset, mode, noise, seed, run, truth in runs_of(args):
        row = {"dataset": dataset, "mode": mode, "noise": noise, "seed": seed,
               **sweep(run, truth, noise, discounts, args.top)}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit("no run found: give --demo and / or detection benchmark folders")
    frame = pd.DataFrame(rows)
    cols = [c for c in frame.columns if c.startswith(("AP d=", f"top{args.top} d="))]
    lines = ["| dataset | mode | noise | seed | " + " | ".join(cols) + " |", "|---|---|---|---|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['noise']} | {r['seed']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    text = (f"# evidence_gmm: discount sweep\n\nScore `evidence x (1 - d p_clean)` on known cells (d = 0: "
            f"`evidence`; the default CLEAN_DISCOUNT is `evidence_gmm`'s d). Per-cell AP of the label errors "
            f"(over the unknown cells where every error is an unknown cell) and the share of the top {args.top} "
            f"suggestions that are right (no learning from decisions). The demo run of seed 0 is where the "
            f"discount was chosen.\n\n" + "\n".join(lines)
            + f"\n\nCommand: `python benchmarks/discount_sweep.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
            f"({time.perf_counter() - t0:.0f} s).\n")
    write_results(args.name, frame, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
