"""How many cross-fitting folds? The demo's review-round training with K folds and E epochs.

For each (K, epochs, seed): the demo data (1,200 digit mosaics, the data draw of the
seed) with 40 % mislabel noise drawn with the seed, ``labelfix train`` with the demo's
recipe (``labelfix.demo.DEMO_TRAIN``: test_resnet, 48 px, 2 cross-fitting rounds) but
``--folds K --epochs E``, then ``labelfix clean``. Reported: the per-cell AP of the label
errors, the precision of the top 300 and 600 suggestions (what the demo's simulated
reviewer checks), and the training seconds. K is chosen on seed 0 (where the other
defaults were chosen) and reported on seeds 1 and 2.

Run: ``python benchmarks/folds_sweep.py [--grid 3x20:0,1,2;4x20:0,1,2;4x14:0,1,2;2x20:0;5x20:0]
[--name folds_sweep] [--set KEY=VALUE ...]``. ``KxE/W`` trains W fold models at a time
(``--fold-workers W``, default 1); ``--set`` changes one more field of the recipe
(``labelfix.train.TrainConfig``; the value is read as YAML, e.g. ``--set
prior_bias=false``). Writes ``benchmarks/results/<name>.json`` and ``.md`` after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_GRID = "3x20:0,1,2;4x20:0,1,2;4x14:0,1,2;2x20:0;5x20:0"


def parse_grid(text: str) -> list[tuple[int, int, int, int]]:
    """"KxE[/W]:seeds;..." -> [(K, E, W, seed), ...] (W: fold models at a time, default 1)."""
    out = []
    for part in text.split(";"):
        ke, seeds = part.split(":")
        ke, _, w = ke.partition("/")
        k, e = (int(x) for x in ke.split("x"))
        out += [(k, e, int(w or 1), int(s)) for s in seeds.split(",")]
    return out


def parse_sets(items: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML value}."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def run_one(work: Path, k: int, epochs: int, seed: int, workers: int = 1, overrides: dict | None = None) -> dict:
    from labelfix.bench.metrics import average_precision, error_cells
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.data.demo import make_demo
    from labelfix.data.noise import write_noisy_coco
    from labelfix.demo import DEMO_TRAIN
    from labelfix.io import read_labels
    from labelfix.train import TrainConfig, train

    data = work / f"data{seed}"
    if not (data / "train_mislabel.json").exists():
        paths = make_demo(data, n_train=1200, n_test=400, seed=seed)
        write_noisy_coco(read_labels(paths["train"]), "mislabel", 0.4, seed, data / "train_mislabel.json")
    clean = read_labels(data / "train.json")
    run = work / f"k{k}e{epochs}s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    train(TrainConfig(data=str(data / "train_mislabel.json"), out=str(run), epochs=epochs, seed=seed,
                      **dict(DEMO_TRAIN, folds=k, fold_workers=workers, **(overrides or {}))).validate(),
          log=lambda s: None)
    seconds = time.perf_counter() - t0
    res = clean_run(run, report=False)
    corr = res.corrections
    truth = np.asarray(clean.labels)
    rows = clean.image_rows().loc[corr["image_id"]].to_numpy()
    cols = clean.class_columns().loc[corr["category_id"]].to_numpy()
    right = truth[rows, cols] == corr["suggested"].to_numpy()
    given = np.asarray(read_labels(data / "train_mislabel.json").labels)
    ap = average_precision(error_cells(given, truth), np.asarray(res.issues.score))
    return {"folds": k, "epochs": epochs, "fold_workers": workers, "set": dict(overrides or {}), "seed": seed, "ap": ap,
            "top300_precision": float(right[:300].mean()),
            "top600_precision": float(right[:600].mean()), "suggestions": int(len(corr)),
            "train_seconds": seconds}


def summarise(rows: list[dict]) -> str:
    def label(r):   # rows written before fold workers existed trained one fold at a time
        w = r.get("fold_workers", 1)
        return (f"{r['folds']} x {r['epochs']}" + (f", {w} at a time" if w > 1 else "")
                + "".join(f", {key}={value}" for key, value in r.get("set", {}).items()))

    lines = ["# Cross-fitting folds and epochs (demo recipe, mislabel 40 %)", "",
             "| folds x epochs | seed | error AP | top-300 precision | top-600 precision | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label(r)} | {r['seed']} | {r['ap']:.3f} | {r['top300_precision']:.3f} | "
                     f"{r['top600_precision']:.3f} | {r['train_seconds']:.0f} |")
    lines += ["", "| folds x epochs | seeds | mean error AP | mean top-300 precision | mean train s |",
              "|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(label(r), []).append(r)
    for name, rs in by.items():
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{np.mean([r['ap'] for r in rs]):.3f} | {np.mean([r['top300_precision'] for r in rs]):.3f} | "
                     f"{np.mean([r['train_seconds'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from labelfix.io import atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=DEFAULT_GRID, help="KxE[/W]:seeds;... (default: %(default)s)")
    ap.add_argument("--name", default="folds_sweep", help="results file stem in benchmarks/results/")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more TrainConfig field of the recipe (YAML value); repeatable")
    args = ap.parse_args(argv)
    overrides = parse_sets(args.set)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, e, w, seed in parse_grid(args.grid):
            rows.append(run_one(Path(tmp), k, e, seed, w, overrides))
            print(json.dumps(rows[-1]), flush=True)
            atomic.write_json(HERE / "results" / f"{args.name}.json", {
                "command": "python benchmarks/folds_sweep.py" + ("" if args.grid == DEFAULT_GRID
                                                                  else f" --grid '{args.grid}'")
                + ("" if args.name == "folds_sweep" else f" --name {args.name}")
                + "".join(f" --set {item}" for item in args.set),
                "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                "rows": rows, "wall_seconds": time.perf_counter() - t0})
            atomic.write_text(HERE / "results" / f"{args.name}.md", summarise(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
