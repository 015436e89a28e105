"""``--loss auto`` on single-positive labels: what the default loss finds, against masked BCE.

For each seed: the demo data (1,200 digit mosaics, the data draw of the seed), single-positive
noise drawn with the seed (one given positive per image, every other cell unknown), then
``labelfix train`` with the demo's recipe (``labelfix.demo.DEMO_TRAIN``: test_resnet, 48 px,
4 folds x 2 rounds, 14 epochs) and each ``--loss`` of the grid, then ``labelfix clean``.
``auto`` is the default since 2026-12-05 (on positive-only labels from random weights, as
here, AN-LS; since 2026-12-06 cross-fitting round 2 then trains ROLE with kappa estimated
from round 1's held-out model, ``labelfix.train.optim.resolve_loss``); ``an-ls`` is what
auto trained before that (AN-LS in every round); ``bce`` was the default before 2026-12-05
(masked BCE: no negative to learn from); ``an`` is the assume-negative loss cleanlab's
baseline trains.
Reported: the AP of the issue score over the unknown cells (the missing positives are the
errors), the number of suggestions and the share of them that is right, the precision of
the top 300, and the training seconds. Nothing was chosen on these runs: AN-LS is Cole et
al.'s (CVPR 2021) loss for this setting; the runs show what the default does.

Run: ``python benchmarks/loss_auto.py [--seeds 0,1] [--losses auto,an-ls,bce,an]``. Writes
``benchmarks/results/loss_auto.json`` and ``.md`` after every run.
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


def run_one(work: Path, loss: str, seed: int) -> dict:
    import yaml

    from labelfix.bench.metrics import average_precision
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.data.demo import make_demo
    from labelfix.data.noise import write_noisy_coco
    from labelfix.demo import DEMO_TRAIN
    from labelfix.io import read_labels
    from labelfix.train import TrainConfig, train
    from labelfix.train.config import run_commit
    from labelfix.train.crossfit import fold_dir

    data = work / f"data{seed}"
    noisy = data / "train_single_positive.json"
    if not noisy.exists():
        paths = make_demo(data, n_train=1200, n_test=400, seed=seed)
        write_noisy_coco(read_labels(paths["train"]), "single-positive", None, seed, noisy)
    run = work / f"{loss}_s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    train(TrainConfig(data=str(noisy), out=str(run), epochs=14, seed=seed, **dict(DEMO_TRAIN, loss=loss)).validate(),
          log=lambda s: None)
    seconds = time.perf_counter() - t0
    res = clean_run(run, report=False)
    clean = read_labels(data / "train.json")
    truth = np.asarray(clean.labels)
    given = np.asarray(read_labels(noisy).labels)
    unknown = given == -1
    corr = res.corrections
    rows = clean.image_rows().loc[corr["image_id"]].to_numpy()
    cols = clean.class_columns().loc[corr["category_id"]].to_numpy()
    right = truth[rows, cols] == corr["suggested"].to_numpy()
    ran = yaml.safe_load((run / "config.yaml").read_text())["train"]
    resolved = ran["loss"] + (f" then {ran['refit_loss']}" if ran.get("refit_loss") else "")
    refit = fold_dir(run, 0, 2) / "config.yaml"   # the estimated kappa of a refit round
    kappa = (yaml.safe_load(refit.read_text())["train"]["loss_kwargs"].get("kappa")
             if ran.get("refit_loss") and refit.exists() else None)
    return {"loss": loss, "resolved": resolved, "kappa": kappa, "true_kappa": float((truth == 1).sum(1).mean()),
            "seed": seed,
            "unknown_ap": average_precision(truth[unknown] == 1, np.asarray(res.issues.score)[unknown]),
            "suggestions": int(len(corr)), "suggestions_right": float(right.mean()) if len(corr) else float("nan"),
            "top300_precision": float(right[:300].mean()) if len(corr) else float("nan"),
            "train_seconds": seconds, "commit": run_commit(run)}


def summarise(rows: list[dict]) -> str:
    lines = ["# --loss auto on single-positive labels (demo recipe)", "",
             "| --loss | trained | kappa (true) | seed | unknown-positive AP | suggestions | share right | "
             "top-300 precision | train s | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kappa = f"{r['kappa']:.2f} ({r['true_kappa']:.2f})" if r.get("kappa") else ""
        lines.append(f"| {r['loss']} | {r['resolved']} | {kappa} | {r['seed']} | {r['unknown_ap']:.3f} | "
                     f"{r['suggestions']} | "
                     f"{r['suggestions_right']:.3f} | {r['top300_precision']:.3f} | {r['train_seconds']:.0f} | "
                     f"{r['commit']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from labelfix.io import atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--losses", default="auto,an-ls,bce,an")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for loss in args.losses.split(","):
                rows.append(run_one(Path(tmp), loss.strip(), seed))
                print(json.dumps(rows[-1]), flush=True)
                atomic.write_json(HERE / "results" / "loss_auto.json", {
                    "command": f"python benchmarks/loss_auto.py --seeds {args.seeds} --losses {args.losses}",
                    "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                    "rows": rows, "wall_seconds": time.perf_counter() - t0})
                atomic.write_text(HERE / "results" / "loss_auto.md", summarise(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
