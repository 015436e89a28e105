"""The detection benchmark's reference alone: how much room a backbone and budget leave.

For each dataset, mode and seed it trains the reference of ``benchmarks/detection.py
--reference`` (``labelfix.bench.runner.train_reference``: cross-fitted masked-BCE fold
models on the *true* labels, the mode's recipe) and scores its held-out probabilities
under every noise setting exactly as cleanlab's are scored (self-confidence against the
noisy labels of that setting and seed; the AP over the unknown cells for missing and
single-positive noise). Compare with the cleanlab column of a detection table of the same
mode: reference - cleanlab is the AP a model the noise did not mislead would win. Useful
where the detection runs themselves are too costly to repeat (fine-tuning).

Run: ``python benchmarks/reference.py [--datasets digits] [--modes finetune] [--seeds 2]
[--folds 4] [--fold-workers 2] [--name reference_finetune]``. Writes
``benchmarks/results/<name>.json`` / ``.md``; the runs go to ``benchmarks/results/<name>/``
(finished runs are reused).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from detection import make_dataset, mode_options  # noqa: E402  (benchmarks/detection.py)
from report import RESULTS, write_results  # noqa: E402  (benchmarks/report.py)


def score(true, probs, noises, seed: int) -> list[dict]:
    """One row per noise setting: the reference's AP (the headline metric of the noise)."""
    from labelfix.bench.metrics import headline_metric
    from labelfix.bench.runner import parse_noise, reference_metrics
    from labelfix.data.noise import inject_noise

    rows = []
    for spec in noises:
        kind, rate = parse_noise(spec)
        det = reference_metrics(inject_noise(true, kind, rate, seed).labels, true, probs)
        rows.append({"noise": spec, "seed": seed, "reference": det[headline_metric(kind)]})
    return rows


def main(argv=None) -> int:
    from labelfix.bench.runner import DEFAULT_NOISES, train_reference
    from labelfix.io import read_labels
    from labelfix.train.config import run_commit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--modes", default="finetune")
    ap.add_argument("--noises", default=",".join(DEFAULT_NOISES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--fold-workers", type=int, default=2)
    ap.add_argument("--name", default="reference_finetune")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    t0 = time.perf_counter()
    root = RESULTS / args.name
    rows = []
    for dataset in [d for d in args.datasets.split(",") if d]:
        train, _ = make_dataset(dataset, root / "data" / dataset)
        clean = read_labels(train)
        true = clean.labels
        for mode in [m for m in args.modes.split(",") if m]:
            for seed in range(args.seeds):
                run_dir = root / dataset / mode / f"seed{seed}"
                probs, secs = train_reference(clean, run_dir, seed=seed, folds=args.folds,
                                              fold_workers=1 if mode == "frozen" else args.fold_workers,
                                              **mode_options(mode, dataset))
                rows += [{"dataset": dataset, "mode": mode, **r, "train_seconds": round(secs, 1),
                          "commit": run_commit(run_dir)}
                         for r in score(true, probs, args.noises.split(","), seed)]
                report(args, pd.DataFrame(rows), time.perf_counter() - t0)   # partial results after every run
    return 0


def report(args, frame: pd.DataFrame, seconds: float) -> None:
    """Write the rows and the table of means over seeds (benchmarks/report.py)."""
    mean = frame.groupby(["dataset", "mode", "noise"], sort=False)["reference"].agg(["mean", "min", "max"])
    lines = ["# The reference: fold models trained on the true labels, ranked like cleanlab's", "",
             f"{args.folds} folds, the mode's recipe of benchmarks/detection.py; AP over the unknown cells for "
             "missing and single-positive noise. Compare with the cleanlab column of a detection table of the "
             "same mode (docs/benchmarks.md).", "",
             "| dataset | mode | noise | reference (mean) | min | max |", "|---|---|---|---|---|---|"]
    for (dataset, mode, noise), r in mean.iterrows():
        lines.append(f"| {dataset} | {mode} | {noise} | {r['mean']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")
    commits = ", ".join(sorted(set(map(str, frame["commit"]))))
    lines += ["", f"Runs trained by labelfix commit(s) {commits}.", "", f"Command: `{shlex.join(['python', 'benchmarks/reference.py'] + sys.argv[1:])}`; "
              f"{seconds:.0f} s on this machine so far (finished runs are reused, not timed)."]
    write_results(args.name, frame, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
