"""Does ``--channels-last`` pay on the CPU? ``labelfix train`` epochs with and without it.

On CUDA channels_last is on by default. On the CPU it is off by default and used when
asked (``labelfix demo`` asks for it): oneDNN's channels_last kernels are faster for
some models and slower for others. This measures, on the bundled demo data, the median
training seconds per epoch and evaluation-pass seconds per epoch of the same run with
and without it (runs interleaved, first epoch dropped), per backbone.

Run: ``python benchmarks/cpu_channels_last.py [--images 600] [--epochs 4] [--repeats 2]``.
Writes ``benchmarks/results/cpu_channels_last.json``.
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

#: (backbone, image size): the demo's model and two common small backbones
MODELS = [("test_resnet", 48), ("resnet18", 64), ("tf_efficientnet_lite0", 96)]


def epoch_seconds(data: Path, out: Path, backbone: str, size: int, channels_last: bool, args) -> pd.DataFrame:
    cfg = TrainConfig(data=str(data), out=str(out), backbone=backbone, img_size=size, epochs=args.epochs,
                      batch_size=32, workers=0, progress=False, randaugment=False, hflip=0.0, seed=0, lr=1e-3,
                      mix="none", device="cpu", channels_last=channels_last)
    train(cfg, log=lambda s: None)
    return pd.read_csv(out / "metrics.csv").iloc[1:]   # drop the first epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_channels_last.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo(Path(tmp) / "data", n_train=args.images, n_test=16, seed=0)["train"]
        for backbone, size in MODELS:
            found = {False: [], True: []}
            for rep in range(args.repeats):
                for cl in (False, True):
                    frame = epoch_seconds(data, Path(tmp) / f"{backbone}_{cl}_{rep}", backbone, size, cl, args)
                    found[cl].append(frame)
            med = {cl: {c: statistics.median(pd.concat(f)[c]) for c in ("train_seconds", "stats_seconds")}
                   for cl, f in found.items()}
            rows.append({"backbone": backbone, "img_size": size,
                         "train_s_per_epoch": {"default": med[False]["train_seconds"],
                                               "channels_last": med[True]["train_seconds"]},
                         "eval_s_per_epoch": {"default": med[False]["stats_seconds"],
                                              "channels_last": med[True]["stats_seconds"]},
                         "train_speedup": med[False]["train_seconds"] / med[True]["train_seconds"],
                         "eval_speedup": med[False]["stats_seconds"] / med[True]["stats_seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/cpu_channels_last.py", "images": args.images, "epochs": args.epochs,
              "repeats": args.repeats, "machine": {"platform": platform.platform(),
                                                   "threads": torch.get_num_threads()},
              "models": rows, "wall_seconds": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
