"""Cost of labelfix's training relative to plain training (same model, batch, data, threads).

Measures, on the bundled demo data (digit mosaics), in one run with the methods
interleaved (a shared machine's load drifts):

- the cost of an epoch of each mixing method relative to plain masked-BCE training
  (training time + the method's per-epoch work; goals: LogicMix <= 1.05x, BalanceMix
  <= 1.5x), BalanceMix with its three re-labeling schedules (``--balancemix-refine
  batch``, the paper's, ``epoch`` and ``evaluation``), BalanceMix's default with RandAugment
  and flips (``auto`` is then ``batch``) against plain training with the same
  augmentation, and the per-epoch statistics pass that every run makes;
- ``labelfix train``'s training images/s against a plain PyTorch loop with the same
  model (labelfix's ``create_model``), the same images decoded and transformed the same
  way by a plain ``Dataset`` + ``DataLoader`` (shuffled, ``--workers``), the same
  optimizer and threads (goal: >= 0.9x).

Run: ``python benchmarks/train_overhead.py [--images 384] [--size 64] [--backbone resnet10t]``.
Writes ``benchmarks/results/train_overhead.json``. Epoch times are medians over the
measured epochs (the first epoch of each run is dropped) of ``--repeats`` interleaved
runs per method.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from labelfix.data.demo import make_demo
from labelfix.train import TrainConfig, train

#: name -> training options of one measured method
METHODS = {
    "plain": {"mix": "none"},
    "mixup": {"mix": "mixup"},
    "logicmix": {"mix": "logicmix"},
    "icmixup": {"mix": "icmixup"},
    "balancemix_batch": {"mix": "balancemix", "balancemix_warmup": 1, "balancemix_refine": "batch"},
    "balancemix_epoch": {"mix": "balancemix", "balancemix_warmup": 1, "balancemix_refine": "epoch"},
    "balancemix_evaluation": {"mix": "balancemix", "balancemix_warmup": 1, "balancemix_refine": "evaluation"},
    # with RandAugment and flips (the default for images), where "auto" is the paper's "batch"
    "plain_augmented": {"mix": "none", "randaugment": True, "hflip": 0.5},
    "balancemix_augmented": {"mix": "balancemix", "balancemix_warmup": 1, "randaugment": True, "hflip": 0.5},
}


def run(data: Path, out: Path, opts: dict, args) -> pd.DataFrame:
    cfg = TrainConfig(**{**dict(data=str(data), out=str(out), backbone=args.backbone, img_size=args.size,
                                epochs=args.epochs, batch_size=args.batch_size, workers=args.workers, progress=False,
                                randaugment=False, hflip=0.0, seed=0, lr=1e-3, device=args.device), **opts})
    train(cfg, log=lambda s: None)
    return pd.read_csv(out / "metrics.csv").iloc[1:]   # drop the first epoch


def plain_loop_images_per_s(data: Path, args) -> float:
    """Training images/s of a plain PyTorch loop: Dataset + DataLoader, forward, BCE,
    backward, AdamW step; the same model, transform, batch and threads as labelfix."""
    from plain_loop import plain_setup

    model, loader, opt = plain_setup(data, args.backbone, args.size, args.batch_size, args.workers,
                                     device=args.device)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rates = []
    for epoch in range(args.epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = loss_fn(model(x.to(args.device)), y.to(args.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += x.shape[0]
        if epoch:   # drop the first epoch, as for labelfix
            rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo", n_train=args.images, n_test=8, size=args.size, seed=0)["train"]
        names = list(METHODS)
        parts = {m: [] for m in names}
        plain_loop = []
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                parts[name].append(run(data, tmp / f"{name}{rep}", METHODS[name], args))
                if name == "plain":   # right after labelfix's plain run: the same machine load
                    plain_loop.append(plain_loop_images_per_s(data, args))
        rows = {m: pd.concat(v) for m, v in parts.items()}

    def med(name, col):
        return float(statistics.median(rows[name][col])) if col in rows[name] else 0.0

    plain = med("plain", "train_seconds")
    epoch = {name: med(name, "train_seconds") + med(name, "mixer_seconds") for name in names}
    labelfix_ips = med("plain", "images_per_s")
    loop_ips = statistics.median(plain_loop)
    result = {
        "command": "python benchmarks/train_overhead.py",
        "setup": {"images": args.images, "img_size": args.size, "backbone": args.backbone,
                  "batch_size": args.batch_size, "measured_epochs": args.epochs - 1, "repeats": args.repeats,
                  "workers": args.workers, "threads": args.threads, "device": args.device,
                  "torch": torch.__version__, "machine": platform.machine(),
                  "processor": platform.processor() or "unknown"},
        "epoch_seconds": epoch,
        "stats_pass_seconds": med("plain", "stats_seconds"),
        "relative_to_plain_epoch": {name: epoch[name] / plain for name in names
                                    if name not in ("plain", "plain_augmented", "balancemix_augmented")},
        # the augmented BalanceMix run against plain training with the same augmentation
        "relative_to_plain_augmented_epoch": {"balancemix_augmented": epoch["balancemix_augmented"]
                                              / epoch["plain_augmented"]},
        # refine="batch": images whose second view was scored, of those scored on a first view
        "relabel_second_view_share": {name: float(rows[name]["relabel_second_views"].sum()
                                                  / max(rows[name]["relabel_first_views"].sum(), 1))
                                      for name in ("balancemix_batch", "balancemix_augmented")},
        "stats_pass_relative": med("plain", "stats_seconds") / plain,
        "images_per_s": {"labelfix_train": labelfix_ips, "plain_pytorch_loop": loop_ips,
                         "ratio": labelfix_ips / loop_ips},
        "goals": {"logicmix": 1.05, "balancemix_batch": 1.5, "balancemix_epoch": 1.5, "balancemix_evaluation": 1.5,
                  "balancemix_augmented": 1.5, "images_per_s_ratio": 0.9},
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("relative_to_plain_epoch", "relative_to_plain_augmented_epoch",
                                             "relabel_second_view_share", "images_per_s")}, indent=2))


if __name__ == "__main__":
    main()
