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
  optimizer and threads (goal: >= 0.9x);
- the LogicMix and mixup functions against one training step, alternated call by call
  (``mixing_function_vs_training_step``): the mixing work alone, free of the epoch noise.

Run: ``python benchmarks/train_overhead.py [--images 384] [--size 64] [--backbone resnet10t]``.
Writes ``benchmarks/results/train_overhead.json``. Epoch times are medians over the
measured epochs (the first epoch of each run is dropped) of ``--repeats`` interleaved
runs per method. ``paired_relative_to_plain`` is the median over the repeats of each
repeat's own ratio (the method's epoch against the plain run of the same repeat, run next
to it), which a load that drifts between repeats does not bias: the number to read when
the machine is noisy. ``paired_cpu_relative_to_plain`` is the same pairing on the CPU
seconds of this process per whole epoch (``time.process_time``), a second measure beside
the wall clock (on the shared 2-core machine it swung with it: waiting threads spin).
``--methods logicmix --repeats 8 --out ...`` measures a few methods with more repeats
(plain, and plain_augmented for balancemix_augmented, always run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
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


class EpochCPU:
    """Training callback: this process's CPU seconds (every thread's, ``time.process_time``)
    between the ends of consecutive epochs."""

    def __init__(self):
        self.marks: list[float] = []

    def on_epoch_end(self, trainer, epoch, row):
        self.marks.append(time.process_time())


def run(data: Path, out: Path, opts: dict, args) -> pd.DataFrame:
    cfg = TrainConfig(**{**dict(data=str(data), out=str(out), backbone=args.backbone, img_size=args.size,
                                epochs=args.epochs, batch_size=args.batch_size, workers=args.workers, progress=False,
                                randaugment=False, hflip=0.0, seed=0, lr=1e-3, device=args.device), **opts})
    cpu = EpochCPU()
    train(cfg, callbacks=[cpu], log=lambda s: None)
    frame = pd.read_csv(out / "metrics.csv").iloc[1:].copy()   # drop the first epoch
    frame["cpu_seconds"] = [b - a for a, b in zip(cpu.marks, cpu.marks[1:])]   # epochs 2.. (whole epoch)
    return frame


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


def mixing_share_of_step(args, alternations: int = 40) -> dict:
    """Milliseconds of the LogicMix and mixup functions on one batch (``--batch-size`` x 3 x
    ``--size``^2) against one training step of the model (forward, BCE, backward, AdamW),
    alternated call by call in this process, so that the machine's drift cancels: the
    mixing work itself, apart from the epoch-level noise of the runs above."""
    from labelfix.mixing.logicmix import logicmix
    from labelfix.mixing.mixup import mixup
    from labelfix.models import create_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    labels = torch.randint(-1, 2, (args.batch_size, 10), generator=gen).to(torch.int8)
    target, known = (labels == 1).float(), labels >= 0
    model = create_model(args.backbone, num_classes=10, pretrained=False, img_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    calls = {"step": step, "logicmix": lambda: logicmix(x, labels, 0.5, generator=gen, return_mixed=True),
             "mixup": lambda: mixup(x, target, known, 1.0, generator=gen)}
    times = {name: [] for name in calls}
    for i in range(alternations + 2):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i >= 2:   # warm-up
                times[name].append(1e3 * (time.perf_counter() - t0))
    ms = {name: float(statistics.median(v)) for name, v in times.items()}
    return {"ms": ms, "share_of_step": {name: ms[name] / ms["step"] for name in ("logicmix", "mixup")}}


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
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "plain"),
                    help="comma-separated methods to measure besides plain (default: all)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_overhead.json"))
    args = ap.parse_args()
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown or args.repeats < 1:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}" if unknown
                 else "--repeats: at least 1")
    if "balancemix_augmented" in chosen:
        chosen.append("plain_augmented")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo", n_train=args.images, n_test=8, size=args.size, seed=0)["train"]
        names = [m for m in METHODS if m == "plain" or m in chosen]
        parts = {m: [] for m in names}
        plain_loop = []
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                parts[name].append(run(data, tmp / f"{name}{rep}", METHODS[name], args))
                if name == "plain":   # right after labelfix's plain run: the same machine load
                    plain_loop.append(plain_loop_images_per_s(data, args))
        rows = {m: pd.concat(v) for m, v in parts.items()}
    mixing = mixing_share_of_step(args)

    def med(name, col):
        return float(statistics.median(rows[name][col])) if col in rows[name] else 0.0

    def epoch_of(frame):
        return float(statistics.median(frame["train_seconds"] + frame.get("mixer_seconds", 0.0)))

    def cpu_of(frame):
        return float(statistics.median(frame["cpu_seconds"]))

    def ratios(name, base, of=epoch_of):
        return [of(a) / of(b) for a, b in zip(parts[name], parts[base])]

    plain = med("plain", "train_seconds")
    epoch = {name: med(name, "train_seconds") + med(name, "mixer_seconds") for name in names}
    bases = {name: "plain_augmented" if name == "balancemix_augmented" else "plain" for name in names
             if name not in ("plain", "plain_augmented")}
    labelfix_ips = med("plain", "images_per_s")
    loop_ips = statistics.median(plain_loop)
    result = {
        "command": " ".join(["python benchmarks/train_overhead.py"] + sys.argv[1:]),
        "setup": {"images": args.images, "img_size": args.size, "backbone": args.backbone,
                  "batch_size": args.batch_size, "measured_epochs": args.epochs - 1, "repeats": args.repeats,
                  "workers": args.workers, "threads": args.threads, "device": args.device,
                  "torch": torch.__version__, "machine": platform.machine(),
                  "processor": platform.processor() or "unknown"},
        "epoch_seconds": epoch,
        "stats_pass_seconds": med("plain", "stats_seconds"),
        "relative_to_plain_epoch": {name: epoch[name] / plain for name, base in bases.items() if base == "plain"},
        # the augmented BalanceMix run against plain training with the same augmentation
        "relative_to_plain_augmented_epoch": {name: epoch[name] / epoch[base] for name, base in bases.items()
                                              if base == "plain_augmented"},
        "paired_relative_to_plain": {name: float(statistics.median(ratios(name, base))) for name, base in bases.items()},
        "paired_ratios_per_repeat": {name: ratios(name, base) for name, base in bases.items()},
        # the whole epoch (training, statistics pass, the method's per-epoch work) in CPU seconds
        "cpu_epoch_seconds": {name: med(name, "cpu_seconds") for name in names},
        "paired_cpu_relative_to_plain": {name: float(statistics.median(ratios(name, base, cpu_of)))
                                         for name, base in bases.items()},
        "paired_cpu_ratios_per_repeat": {name: ratios(name, base, cpu_of) for name, base in bases.items()},
        # refine="batch": images whose second view was scored, of those scored on a first view
        "relabel_second_view_share": {name: float(rows[name]["relabel_second_views"].sum()
                                                  / max(rows[name]["relabel_first_views"].sum(), 1))
                                      for name in ("balancemix_batch", "balancemix_augmented") if name in rows},
        "stats_pass_relative": med("plain", "stats_seconds") / plain,
        "mixing_function_vs_training_step": mixing,
        "images_per_s": {"labelfix_train": labelfix_ips, "plain_pytorch_loop": loop_ips,
                         "ratio": labelfix_ips / loop_ips},
        "goals": {"logicmix": 1.05, "balancemix_batch": 1.5, "balancemix_epoch": 1.5, "balancemix_evaluation": 1.5,
                  "balancemix_augmented": 1.5, "images_per_s_ratio": 0.9},
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("relative_to_plain_epoch", "relative_to_plain_augmented_epoch",
                                             "paired_relative_to_plain", "paired_cpu_relative_to_plain",
                                             "mixing_function_vs_training_step",
                                             "relabel_second_view_share",
                                             "images_per_s")}, indent=2))


if __name__ == "__main__":
    main()
