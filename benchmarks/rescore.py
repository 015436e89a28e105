"""Every issue score rule of ``labelfix clean`` on finished detection runs, without retraining.

For each cross-fitted run that ``benchmarks/detection.py`` left in ``DIR/<dataset>/<mode>/
runs/<noise>/seed<s>/labelfix``: the inputs ``labelfix clean`` scores
(``labelfix.cleaning.clean_run.run_evidence``, and the neighbours' votes that the
benchmark's own ``clean`` wrote to ``cells/neighbours.npy``), every rule of
``labelfix.cleaning.scores.list_scorers()`` (``two_view`` only where the run recorded it),
and the per-cell AP of the label errors (over the unknown cells where every error is an
unknown cell, as in the detection benchmark), and each rule's flagging precision at
cleanlab's recall (``labelfix.bench.metrics.precision_at_recall``). cleanlab's and the
loss ranking's AP, and cleanlab's recall and precision, come from the benchmark's
``results.csv`` of the same runs.

``--neighbours 0,10,50,all`` adds the default rule (``evidence``) with the neighbours' vote
computed again at each k (``labelfix.cleaning.evidence.neighbour_votes``, the search
``labelfix clean --neighbours K`` makes; ``all``: every training image of the other folds,
so the vote is the class's share of positive known labels; 0: no vote). On positive-only
labels ``clean`` takes no vote, so neither do these columns.

Run: ``python benchmarks/rescore.py DIR [DIR ...] [--name rescore] [--neighbours K,K,...]``. Writes
``benchmarks/results/<name>.json`` (one row per run) and ``.md`` (means over seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.bench.metrics import UNKNOWN_ERRORS, headline_metric

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from detection import collect, read_results  # noqa: E402  (benchmarks/detection.py)
from report import write_results  # noqa: E402


def runs_of(root: Path):
    """(dataset, mode, noise tag, seed, run dir) of every finished labelfix run under ``root``."""
    for run in sorted(root.glob("*/*/runs/*/seed*/labelfix")):
        if (run / "cells" / "score.npy").exists():
            seed_dir = run.parent
            yield (seed_dir.parents[3].name, seed_dir.parents[2].name, seed_dir.parent.name,
                   int(seed_dir.name[4:]), run)


#: suffix of the columns holding a rule's precision at cleanlab's recall
AT_RECALL = " @cl-recall"


def rescore(root: Path, dataset: str, mode: str, tag: str, seed: int, run_dir: Path,
            cleanlab_recall: float = float("nan"), ks: tuple = ()) -> dict:
    from labelfix.bench.metrics import detection_metrics, precision_at_recall
    from labelfix.cleaning import find_label_issues, list_scorers
    from labelfix.cleaning.clean_run import run_evidence
    from labelfix.cleaning.evidence import neighbour_votes
    from labelfix.io import read_labels
    from labelfix.labels import positive_only
    from labelfix.run import Run

    run = Run(run_dir)
    evidence = run_evidence(run)
    true = np.asarray(read_labels(root / "data" / dataset / "train.json").labels)
    given = np.asarray(evidence["given"])
    kind = tag.split("_")[0]
    metric = headline_metric(kind)
    neighbours = run.cell("neighbours", required=False)
    row = {"dataset": dataset, "mode": mode, "noise": tag, "seed": seed}
    for name in list_scorers():
        if name == "two_view" and evidence["two_view"] is None:
            continue
        score = np.asarray(find_label_issues(**evidence, neighbours=neighbours, scorer=name).score)
        row[name] = detection_metrics(given, true, score)[metric]
        row[name + AT_RECALL] = precision_at_recall(given, true, score, cleanlab_recall)
    for k in ks:
        votes = None if k == 0 or positive_only(given) else neighbour_votes(run, k or len(given))[0]
        score = np.asarray(find_label_issues(**evidence, neighbours=votes).score)
        name = f"evidence k={'all' if k is None else k}"
        row[name] = detection_metrics(given, true, score)[metric]
        row[name + AT_RECALL] = precision_at_recall(given, true, score, cleanlab_recall)
    return row


def neighbour_counts(text: str) -> tuple:
    """``--neighbours``: "0,10,all" -> (0, 10, None)."""
    try:
        return tuple(None if t.strip() == "all" else int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SystemExit(f"--neighbours: {text!r}: expected comma-separated integers or 'all'") from None


def baselines(root: Path) -> pd.DataFrame:
    """cleanlab's and the loss ranking's AP per (dataset, mode, noise tag, seed)."""
    frames = []
    for path in sorted(root.glob("*/*/results.csv")):
        wide = collect(read_results(path), path.parents[1].name, path.parent.name)
        wide["noise"] = wide["noise"].str.replace(":", "_")
        wide = wide.rename(columns={"cleanlab": "baseline: cleanlab", "loss": "baseline: loss ranking"})
        wide = wide.rename(columns={"cleanlab_recall": "cleanlab recall", "cleanlab_precision": "cleanlab precision"})
        frames.append(wide[["dataset", "mode", "noise", "seed", "cleanlab recall", "cleanlab precision"]
                           + [c for c in wide if c.startswith("baseline")]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table(frame: pd.DataFrame, rules: list[str]) -> str:
    """Means over seeds of the ``rules`` columns, one row per (runs, dataset, mode, noise)."""
    mean = frame.groupby(["source", "dataset", "mode", "noise"], sort=False)[rules].mean()
    seeds = frame.groupby(["source", "dataset", "mode", "noise"], sort=False)["seed"].apply(
        lambda s: ",".join(str(int(x)) for x in sorted(s)))
    lines = ["| runs | dataset | mode | noise | seeds | " + " | ".join(rules) + " |",
             "|---|---|---|---|---|" + "---|" * len(rules)]
    for key, r in mean.iterrows():
        lines.append("| " + " | ".join(key) + f" | {seeds[key]} | " +
                     " | ".join("" if pd.isna(r[c]) else f"{r[c]:.3f}" for c in rules) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="output folders of benchmarks/detection.py")
    ap.add_argument("--name", default="rescore", help="results file name in benchmarks/results/")
    ap.add_argument("--neighbours", default="", help="also the evidence rule with the vote of k neighbours, "
                    "for each k of a comma-separated list ('all': every image; 0: no vote)")
    args = ap.parse_args(argv)
    ks = neighbour_counts(args.neighbours)
    t0 = time.perf_counter()
    rows = []
    for d in args.dirs:
        root = Path(d)
        base = baselines(root)
        recall = ({} if not len(base) else
                  base.set_index(["dataset", "mode", "noise", "seed"])["cleanlab recall"].to_dict())
        found = [rescore(root, *r, cleanlab_recall=recall.get(r[:4], float("nan")), ks=ks) for r in runs_of(root)]
        if not found:
            raise SystemExit(f"{root}: no finished detection run under <dataset>/<mode>/runs/")
        frame = pd.DataFrame(found)
        if len(base):
            frame = frame.merge(base, on=["dataset", "mode", "noise", "seed"], how="left")
        frame.insert(0, "source", root.name)
        rows.append(frame)
        print(f"{root}: {len(found)} runs rescored", file=sys.stderr, flush=True)
    frame = pd.concat(rows, ignore_index=True)
    keys = ("dataset", "mode", "noise", "seed", "source")
    ap_cols = [c for c in frame.columns if c not in keys and not c.endswith(AT_RECALL) and "cleanlab " not in c]
    flag_cols = ["cleanlab recall", "cleanlab precision"] + [c for c in frame.columns if c.endswith(AT_RECALL)]
    text = (f"# Issue score rules on finished detection runs\n\nPer-cell AP of the label errors (over the "
            f"unknown cells for {', '.join(UNKNOWN_ERRORS)}), mean over seeds; `evidence` is the default; "
            f"the baselines from the same runs' results.csv.\n\n{table(frame, ap_cols)}\n\n"
            f"## Flagging: each rule's precision at cleanlab's recall\n\ncleanlab's recall and precision "
            f"(`find_multilabel_issues_per_class`) from results.csv; each rule flags the shortest top of its "
            f"ranking that finds as many errors. Goal: at least cleanlab's precision.\n\n"
            f"{table(frame, flag_cols)}\n\nCommand: `python "
            f"benchmarks/rescore.py {' '.join(args.dirs)} --name {args.name}"
            + (f" --neighbours {args.neighbours}" if args.neighbours else "") + f"` ({time.perf_counter() - t0:.0f} s).\n")
    write_results(args.name, frame, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
