"""Fast mode (``--frozen``) at scale on the CPU.

1. Embedding speed: seconds per 1,000 images to embed the scenes dataset's images with
   ``tf_efficientnet_lite0`` (the offline ImageNet weights) at ``--size`` px through
   labelfix's chunked, resumable embedding, beside a plain timm forward loop over the
   same images (same decoder, transform, batch and threads) in the same run.
2. Head training + clean at 100,000 images x 80 classes: synthetic embeddings (1280-d,
   the backbone's width: each image the sum of its classes' random prototypes plus
   noise), labels with 20 % mislabel noise, ``labelfix train --frozen --folds 3`` (2
   rounds) on the stored embeddings, then ``labelfix clean`` (GMMs, neighbours,
   corrections), and beside it cleanlab's ``find_multilabel_issues_per_class`` on the same
   held-out probabilities. The embeddings are written where ``--frozen`` keeps its own
   (``RUN/features/train.npy``), so training starts from them as it would after an
   embedding run.

Run: ``python benchmarks/frozen_scale.py [--n 100000] [--k 80]``. Writes
``benchmarks/results/frozen_scale.json`` (docs/benchmarks.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent


def embedding_speed(args, tmp: Path) -> dict:
    from torch.utils.data import DataLoader

    from labelfix.data.dataset import PartialLabelDataset, collate_skip
    from labelfix.data.scenes import make_scenes
    from labelfix.io import read_labels
    from labelfix.models.weights import efficientnet_lite0_file
    from labelfix.train import TrainConfig
    from labelfix.train.engine import Trainer

    paths = make_scenes(tmp / "scenes", n_train=args.images, n_test=8, size=96, seed=0)
    cfg = TrainConfig(data=str(paths["train"]), out=str(tmp / "embed"), backbone="tf_efficientnet_lite0",
                      weights=str(efficientnet_lite0_file()), frozen=True, img_size=args.size, epochs=1,
                      batch_size=64, workers=0, progress=False, device="cpu")
    trainer = Trainer(cfg, log=lambda s: None)
    trainer._prepare_data()
    t0 = time.perf_counter()
    trainer._build()   # embeds every image (features/train.npy)
    labelfix_s = time.perf_counter() - t0
    # plain loop: the same model, decoder, transform, batch
    ls = read_labels(paths["train"])
    model = trainer.model.eval()
    loader = DataLoader(PartialLabelDataset(ls, trainer.eval_tf), batch_size=64, collate_fn=collate_skip)
    t0 = time.perf_counter()
    with torch.no_grad():
        for images, _labels, _idx, _failed in loader:
            model.forward_features(images)
    plain_s = time.perf_counter() - t0
    return {"images": args.images, "img_size": args.size, "labelfix_seconds_per_1000": 1000 * labelfix_s / args.images,
            "plain_loop_seconds_per_1000": 1000 * plain_s / args.images, "ratio": labelfix_s / plain_s,
            "note": "labelfix's time includes building the model and writing the float16 memmap"}


def synthetic_run_data(n: int, k: int, d: int, folder: Path, seed: int = 0):
    """A label directory of n images x k classes with 20 % mislabel noise, and their
    synthetic d-dimensional embeddings."""
    from labelfix.data.noise import inject_noise
    from labelfix.labels import LabelSet

    rng = np.random.default_rng(seed)
    p = 0.6 ** rng.permutation(k) * 0.3 + 0.005
    true = (rng.random((n, k)) < p).astype(np.int8)
    protos = rng.normal(size=(k, d)).astype(np.float32)
    feats = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 20000):
        block = true[s:s + 20000].astype(np.float32) @ protos
        feats[s:s + 20000] = np.maximum(block + rng.normal(0, 2.0, block.shape), 0).astype(np.float16)
    noisy = inject_noise(true, "mislabel", 0.2, seed).labels
    images = pd.DataFrame({"image_id": np.arange(1, n + 1), "file_name": [f"img{i}.png" for i in range(n)],
                           "width": 0, "height": 0})
    classes = pd.DataFrame({"name": [f"class{j}" for j in range(k)], "category_id": np.arange(1, k + 1)})
    # placeholder image files (1 x 1 px): the embeddings stand for the images, but a run's
    # image folder must hold readable images
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    per_file = 50_000   # hard links per inode stay below ext4's limit (65,000)
    for i in range(n):
        if i % per_file == 0:
            first = folder / "images" / f"img{i}.png"
            Image.new("RGB", (1, 1)).save(first)
        else:
            (folder / "images" / f"img{i}.png").hardlink_to(first)
    LabelSet(noisy, images, classes, folder / "images", {"format": "synthetic"}).save(folder / "data")
    return true, noisy, feats


def head_training_and_clean(args, tmp: Path) -> dict:
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    from labelfix.bench.metrics import detection_metrics
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.io import atomic, read_labels
    from labelfix.numeric import sigmoid
    from labelfix.train import TrainConfig, train
    from labelfix.train.features import _images_fingerprint

    d = 1280
    true, noisy, feats = synthetic_run_data(args.n, args.k, d, tmp / "big")
    run = tmp / "big" / "run"
    cfg = TrainConfig(data=str(tmp / "big" / "data"), out=str(run), backbone="tf_efficientnet_lite0", frozen=True,
                      img_size=224, folds=3, epochs=args.epochs, batch_size=256, lr=1e-2, workers=0, progress=False,
                      device="cpu", mix="none")
    # the embeddings where --frozen keeps them, with the record its embedding would write
    ls = read_labels(cfg.data)
    meta = {"backbone": cfg.backbone, "img_size": cfg.img_size, "weights": "random-init",
            "images": _images_fingerprint(ls)}
    (run / "features").mkdir(parents=True)
    np.save(run / "features" / "train.npy", feats)
    atomic.write_json(run / "features" / "train.json", {"rows_done": args.n, "complete": True, "meta": meta})
    t0 = time.perf_counter()
    train(cfg, log=lambda s: None)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = clean_run(run, report=False)
    clean_s = time.perf_counter() - t0
    probs = sigmoid(np.load(run / "stats" / "logits.npy").astype(np.float32)).astype(np.float64)
    labels = [np.flatnonzero(row == 1).tolist() for row in noisy]
    t0 = time.perf_counter()
    flagged = np.asarray(find_multilabel_issues_per_class(labels, np.clip(probs, 1e-6, 1 - 1e-6)), dtype=bool)
    cleanlab_s = time.perf_counter() - t0
    det = detection_metrics(noisy, true, np.asarray(res.issues.score), np.asarray(res.issues.suggested))
    return {"images": args.n, "classes": args.k, "cells": args.n * args.k, "feature_dim": d,
            "epochs": args.epochs, "folds": 3, "rounds": 2,
            "train_seconds": train_s, "clean_seconds": clean_s, "cleanlab_per_class_seconds": cleanlab_s,
            "labelfix_ap": det["ap"], "cleanlab_flagged": int(flagged.sum()), "suggestions": len(res.corrections)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="images for the embedding speed")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "frozen_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = {"command": " ".join(["python", "benchmarks/frozen_scale.py"] + sys.argv[1:]),
                  "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                  "embedding": embedding_speed(args, tmp),
                  "heads_and_clean": head_training_and_clean(args, tmp)}
    result["wall_seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
