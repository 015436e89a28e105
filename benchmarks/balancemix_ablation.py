"""Where BalanceMix gains or loses clean-test mAP against masked BCE on the demo data.

Issue #3 asks that BalanceMix beat masked BCE under 40 % mislabel noise in short CPU
runs. This benchmark takes BalanceMix apart on the benchmark's training configuration
(``labelfix.bench.runner.BENCH_TRAIN``: test_resnet, 32 px, batch 32, no RandAugment,
label management from epoch 4), one seed:

- ``bce``: masked BCE, no mixing;
- ``balancemix``: the full method;
- ``mixing_only``: minority sampler + pairwise mixing, no label management
  (``--balancemix-warmup`` past the last epoch);
- ``oracle_management``: the full method with the label GMMs' p_G replaced by the truth
  (1 on correct cells, 0 on wrong ones): the ceiling of the label management;

each under mislabel:0.4, plus ``bce`` and ``mixing_only`` on the clean labels (the cost
of mixing alone). ``--images`` / ``--epochs`` change the budget (the docs quote the
default 1200 x 10 and 400 x 40, where masked BCE starts to memorise).

Run: ``python benchmarks/balancemix_ablation.py [--images 1200] [--epochs 10]``; writes
``benchmarks/results/balancemix_ablation[_<images>x<epochs>].json`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labelfix.bench.baselines import predict_probs
from labelfix.bench.runner import BENCH_TRAIN, _aligned_test
from labelfix.data.demo import make_demo
from labelfix.data.noise import inject_noise
from labelfix.io import read_labels
from labelfix.labels import LabelSet
from labelfix.train import TrainConfig, train
from labelfix.train import balancemix as bmx
from labelfix.train.metrics import class_groups, map_report

VARIANTS = {
    # name: (noisy labels?, mix, extra options, oracle p_G)
    "bce": (True, "none", {}, False),
    "balancemix": (True, "balancemix", {}, False),
    "mixing_only": (True, "balancemix", {"balancemix_warmup": 10_000}, False),
    "oracle_management": (True, "balancemix", {}, True),
    "clean_bce": (False, "none", {}, False),
    "clean_mixing_only": (False, "balancemix", {"balancemix_warmup": 10_000}, False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1200, help="training images (the demo's first N)")
    ap.add_argument("--epochs", type=int, default=BENCH_TRAIN["epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    default_name = "balancemix_ablation.json" if (args.images, args.epochs) == (1200, BENCH_TRAIN["epochs"]) \
        else f"balancemix_ablation_{args.images}x{args.epochs}.json"
    out_path = args.out or Path(__file__).parent / "results" / default_name

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_demo(tmp / "demo")
        clean = read_labels(paths["train"])
        rows = np.arange(min(args.images, clean.num_images))
        clean = clean.subset(rows)
        true = np.asarray(clean.labels)
        noisy = inject_noise(true, "mislabel", 0.4, args.seed).labels
        sets = {True: LabelSet(noisy, clean.images, clean.classes, clean.image_root, dict(clean.source)),
                False: clean}
        for flag, ls in sets.items():
            ls.save(tmp / f"data_{'noisy' if flag else 'clean'}")
        test = _aligned_test(paths["test"], clean)
        groups = class_groups((true == 1).sum(0), clean.num_images, "tertile")
        gmm_p_clean = bmx.clean_probability

        def oracle(losses, given_rows):
            g = np.asarray(given_rows)
            p = (g == true).astype(np.float64)
            p[g < 0] = np.nan
            return p

        results = {}
        for name in args.variants.split(","):
            is_noisy, mix, extra, use_oracle = VARIANTS[name]
            opts = {**BENCH_TRAIN, "epochs": args.epochs, **extra}
            cfg = TrainConfig(data=str(tmp / f"data_{'noisy' if is_noisy else 'clean'}"), out=str(tmp / name),
                              loss="bce", mix=mix, seed=args.seed, **opts)
            bmx.clean_probability = oracle if use_oracle else gmm_p_clean
            t0 = time.perf_counter()
            try:
                train(cfg, log=lambda s: None)
            finally:
                bmx.clean_probability = gmm_p_clean
            probs = predict_probs(Path(cfg.out) / "checkpoints" / "last.pt", test, batch_size=64)
            rep = map_report(np.nan_to_num(probs, nan=0.0), np.asarray(test.labels), groups)
            results[name] = {"map": round(float(rep["map"]), 2), "seconds": round(time.perf_counter() - t0, 1)}
            print(name, results[name], flush=True)

    doc = {"benchmark": "balancemix_ablation", "noise": "mislabel:0.4", "images": int(rows.size),
           "epochs": args.epochs, "seed": args.seed, "train": {**BENCH_TRAIN, "epochs": args.epochs},
           "results": results, "machine": {"cpu_count": os.cpu_count(),
                                           "python": platform.python_version(), "torch": torch.__version__}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
