"""Cost of labelfix's training add-ons relative to a plain epoch (same model, batch, data).

Measures, on the bundled demo data (digit mosaics):
- LogicMix: training-epoch time with ``--mix logicmix`` / plain (target <= 1.10x);
- the per-epoch statistics pass over all N images (no augmentation) / plain epoch;
- BalanceMix: (training epoch with minority batches + minority weights + label GMMs +
  two-view re-labeling of images with a non-clean cell) / plain epoch (target <= 2x).

Run: ``python benchmarks/train_overhead.py [--images 384] [--size 64] [--backbone resnet10t]``.
Writes ``benchmarks/results/train_overhead.json``. End-to-end times are medians over the
measured epochs of ``--repeats`` interleaved runs per method (the first epoch of each
run is discarded as warm-up), because a shared machine's load drifts. LogicMix's own
cost is also measured step by step (mixing + forward/backward vs forward/backward on the
same batch, interleaved), which is insensitive to that drift.
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


def run(data: Path, out: Path, mix: str, args) -> pd.DataFrame:
    cfg = TrainConfig(data=str(data), out=str(out), backbone=args.backbone, img_size=args.size,
                      epochs=args.epochs, batch_size=args.batch_size, workers=args.workers, progress=False,
                      mix=mix, randaugment=False, balancemix_warmup=1, seed=0, lr=1e-3, device=args.device)
    train(cfg, log=lambda s: None)
    return pd.read_csv(out / "metrics.csv").iloc[1:]   # drop the first epoch


def logicmix_step_cost(args, iters: int = 15) -> dict:
    """Median seconds of a training step with and without LogicMix on one fixed batch."""
    from labelfix.losses import create_loss, split_labels
    from labelfix.mixing.logicmix import logicmix
    from labelfix.models import create_model

    model = create_model(args.backbone, "linear", num_classes=10, img_size=args.size).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = create_loss("bce")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    labels = torch.randint(-1, 2, (args.batch_size, 10), generator=gen).to(torch.int8)

    def step(mix: bool) -> float:
        t = time.perf_counter()
        xb, lb = (logicmix(x, labels, 0.5, generator=gen) if mix else (x, labels))
        target, known = split_labels(lb)
        loss = loss_fn(model(xb.to(args.device)), target.to(args.device), known.to(args.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(False), step(True)
    plain, mixed = [], []
    for _ in range(iters):
        plain.append(step(False))
        mixed.append(step(True))
    p, m = statistics.median(plain), statistics.median(mixed)
    return {"plain_step_s": p, "logicmix_step_s": m, "relative": m / p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo", n_train=args.images, n_test=8, size=args.size, seed=0)["train"]
        t0 = time.perf_counter()
        mixes = ["none", "logicmix", "balancemix"]
        parts = {m: [] for m in mixes}
        for rep in range(args.repeats):
            for mix in mixes[rep % 3:] + mixes[:rep % 3]:
                parts[mix].append(run(data, tmp / f"{mix}{rep}", mix, args))
        rows = {m: pd.concat(v) for m, v in parts.items()}
        wall = time.perf_counter() - t0
    step = logicmix_step_cost(args)

    def med(mix, col):
        return float(statistics.median(rows[mix][col]))

    plain = med("none", "train_seconds")
    bm_train = med("balancemix", "train_seconds")
    bm_extra = med("balancemix", "balancemix_seconds")
    result = {
        "setup": {"images": args.images, "img_size": args.size, "backbone": args.backbone,
                  "batch_size": args.batch_size, "measured_epochs": args.epochs - 1, "workers": args.workers,
                  "threads": args.threads, "device": args.device, "torch": torch.__version__,
                  "machine": platform.machine(), "processor": platform.processor() or "unknown"},
        "seconds": {
            "plain_epoch": plain,
            "logicmix_epoch": med("logicmix", "train_seconds"),
            "stats_pass": med("none", "stats_seconds"),
            "balancemix_epoch": bm_train,
            "balancemix_management": bm_extra,
            "balancemix_rescored_images": med("balancemix", "rescored_images"),
        },
        "relative_to_plain_epoch": {
            "logicmix": med("logicmix", "train_seconds") / plain,
            "stats_pass": med("none", "stats_seconds") / plain,
            "balancemix_training": bm_train / plain,
            "balancemix_management": bm_extra / plain,
            "balancemix_total": (bm_train + bm_extra) / plain,
        },
        "logicmix_step": step,
        "targets": {"logicmix": 1.10, "balancemix_total": 2.0},
        "wall_seconds": wall,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["relative_to_plain_epoch"], indent=2))


if __name__ == "__main__":
    main()
