"""Repeated cross-fitting through the product: runs of other seeds averaged by
``labelfix clean RUN --with-run OTHER``, against cleanlab given the same number of splits.

``benchmarks/frozen_heads.py`` found one remedy that never cost AP on frozen features:
the mean of the held-out probabilities of several fold assignments. A user gets it
without a new option: train the same recipe with other ``--seed`` values (the seed
draws the folds and the initialisation) and clean the first run with ``--with-run``
(docs/cleaning.md, "Averaging runs"). This script measures that recipe on the labelfix
runs of a ``benchmarks/detection.py`` output folder, and, so that the comparison is not
bought with compute, cleanlab on the mean of the same runs' round-1 held-out
probabilities (its own repeated cross-fitting, as a cleanlab user could do it):

- ``labelfix``: the detection run alone (``labelfix clean RUN``; the detection table's number);
- ``labelfix, R seeds``: ``labelfix clean RUN --with-run ...`` over R runs;
- ``cleanlab``: self-confidence on RUN's round-1 held-out probabilities (the detection
  table's cleanlab where labelfix trains masked BCE without mixing);
- ``cleanlab, R splits``: the same on the mean of the R runs' round-1 held-out logits.

The extra runs are RUN's recipe (its config.yaml) with seed + 1000 j, in
``RUN/../labelfix_seed<j>`` (reused when finished). ``clean`` rewrites RUN's cells/ and
corrections.csv (a benchmark folder, not a user's run).

Run: ``python benchmarks/seed_average.py --runs DIR [--modes frozen] [--noises
flip_0.2,mislabel_0.4] [--seeds-averaged 3]``. Writes ``benchmarks/results/seed_average.json``
/ ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from detection import detection_runs  # noqa: E402  (benchmarks/detection.py)
from report import write_results  # noqa: E402  (benchmarks/report.py)

SEED_STEP = 1000


def extra_runs(run: Path, count: int) -> tuple[list[Path], float]:
    """Train (or reuse) ``count`` runs of ``run``'s recipe with seed + 1000 j; returns
    their folders and the seconds their training took (0 for reused runs)."""
    from labelfix.bench.runner import train_once
    from labelfix.train.config import read_run_config

    cfg = read_run_config(run)
    paths, seconds = [], 0.0
    for j in range(1, count + 1):
        out = run.parent / f"{run.name}_seed{j}"
        secs, reused = train_once(dataclasses.replace(cfg, seed=cfg.seed + SEED_STEP * j, out=str(out),
                                                       resume=False, progress=False), lambda line: None)
        seconds += 0.0 if reused else secs["train_seconds"]
        paths.append(out)
    return paths, seconds


def headline(noisy, true, score, suggested, kind: str) -> float:
    from labelfix.bench.metrics import detection_metrics, headline_metric

    return float(detection_metrics(noisy, true, score, suggested)[headline_metric(kind)])


def measure(run: Path, true: np.ndarray, kind: str, seeds_averaged: int) -> dict:
    """The four rankings of the module docstring on one detection run."""
    from labelfix.bench.baselines import cleanlab_issues
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.numeric import sigmoid

    noisy = np.load(run / "labels.npy")
    others, seconds = extra_runs(run, seeds_averaged - 1)
    row = {}
    for name, with_runs in (("labelfix", []), (f"labelfix, {seeds_averaged} seeds", others)):
        res = clean_run(run, report=False, with_runs=[str(p) for p in with_runs])
        row[name] = headline(noisy, true, np.asarray(res.issues.score), np.asarray(res.issues.suggested), kind)
    round1 = [np.load(p / "stats" / "round1" / "logits.npy").astype(np.float32) for p in [run, *others]]
    for name, logits in (("cleanlab", round1[0]), (f"cleanlab, {seeds_averaged} splits", np.mean(round1, axis=0))):
        iss = cleanlab_issues(noisy, sigmoid(logits))
        row[name] = headline(noisy, true, iss.score, iss.suggested, kind)
    row["extra_train_seconds"] = round(seconds, 1)
    return row


def main(argv=None) -> int:
    from labelfix.bench.runner import parse_noise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="a benchmarks/detection.py output folder")
    ap.add_argument("--modes", default="frozen")
    ap.add_argument("--noises", default="flip_0.2,mislabel_0.4", help="run folders' noise tags")
    ap.add_argument("--seeds-averaged", type=int, default=3, help="runs averaged (the detection run and R - 1 more)")
    ap.add_argument("--name", default="seed_average")
    args = ap.parse_args(argv)
    if args.seeds_averaged < 2:
        raise SystemExit("--seeds-averaged must be at least 2")
    t0 = time.perf_counter()
    rows = []
    for dataset, mode, tag, seed, run, true in detection_runs(args.runs, args.modes.split(","),
                                                              args.noises.split(",")):
        if not (run / "stats" / "round1" / "logits.npy").exists():
            raise SystemExit(f"{run}: not a finished cross-fitted detection run")
        kind, _ = parse_noise(tag.replace("_", ":", 1))   # folder tag flip_0.2 -> flip:0.2
        rows.append({"dataset": dataset, "mode": mode, "noise": tag, "seed": seed,
                     **measure(run, true, kind, args.seeds_averaged)})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    write_results(args.name, frame, markdown(frame, args.seeds_averaged, time.perf_counter() - t0, argv))
    return 0


def markdown(frame: pd.DataFrame, r: int, seconds: float, argv) -> str:
    cols = ["labelfix", f"labelfix, {r} seeds", "cleanlab", f"cleanlab, {r} splits"]
    mean = frame.groupby(["dataset", "mode", "noise"], sort=False)[cols].mean()
    head = ["dataset", "mode", "noise", *cols, f"labelfix {r} seeds - cleanlab {r} splits"]
    lines = [f"# Repeated cross-fitting: {r} runs averaged by `labelfix clean --with-run`", "",
             "Mean over the seeds found. AP over all cells (over the unknown cells where every error is an unknown "
             "cell). benchmarks/seed_average.py says what each column ranks.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in mean.iterrows():
        lines.append("| " + " | ".join(key) + " | " + " | ".join(f"{row[c]:.3f}" for c in cols)
                     + f" | {row[cols[1]] - row[cols[3]]:+.3f} |")
    cmd = shlex.join(["python", "benchmarks/seed_average.py"] + list(sys.argv[1:] if argv is None else argv))
    lines += ["", f"Extra training: {frame['extra_train_seconds'].sum():.0f} s for {(r - 1) * len(frame)} more runs "
                  f"where not reused. Command: `{cmd}`; {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
