"""What else a linear head on frozen features can recover of the reference's room.

docs/benchmarks.md ("How much room the backbone leaves") shows that under flip and
mislabel noise a frozen head trained on the *true* labels ranks the label errors 0.09 to
0.19 AP above cleanlab, and that labelfix's rounds win back only 0.01 to 0.08 of it. This
script asks whether the usual remedies for noisy labels would win back more, on the
stored features of a ``benchmarks/detection.py --modes frozen`` output folder (no image
is decoded, nothing is re-embedded).

Every variant trains the same plain PyTorch linear head as the frozen recipe
(``detection.mode_options("frozen")``: AdamW, lr 3e-3, weight decay 1e-4, batch 64, 30
epochs, cosine schedule; masked BCE) on the run's own folds, and its held-out
probabilities are ranked by self-confidence |y - p| (as cleanlab ranks), so rows differ
only in what the row names:

- ``bce``: the plain head (cleanlab's ranking of it; the baseline of the rows below);
- ``reference``: the head trained on the true labels (not available to a user);
- ``gce q``: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018, Eq. 6: (1 - p_y^q)
  / q per cell, p_y the probability of the given label);
- ``bootstrap``: hard bootstrapping (Reed et al., ICLR 2015 workshop, Eq. 8: target
  0.8 y + 0.2 [p > 0.5]);
- ``small-loss drop r``: per batch, the r largest losses of each given label value are
  left out, r ramped up over the first 10 epochs (the selection of Co-teaching, Han et
  al., NeurIPS 2018, Eq. 3, with one network);
- ``folds F``: F folds instead of the run's;
- ``3 splits``: the mean of the held-out probabilities of three fold assignments
  (repeated cross-fitting; the run's folds and two random ones of the same size);
- ``round 2 hide`` / ``round 2 flip``: a second round trained with the 20 % most
  doubtful cells of each class and given label (|y - p| > 0.5 too) hidden or flipped,
  scored with the mean of both rounds' probabilities (labelfix's rounds, simplified: a
  quantile instead of the label GMMs).

Run: ``python benchmarks/frozen_heads.py --runs DIR [--noises flip_0.2,mislabel_0.4]``
(DIR: a detection.py output folder with frozen runs). Writes
``benchmarks/results/frozen_heads.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from detection import detection_runs, mode_options  # noqa: E402  (benchmarks/detection.py)
from report import write_results  # noqa: E402  (benchmarks/report.py)

#: the variants, in the order of the table: name -> keyword arguments of :func:`heldout`
#: or a special name handled in :func:`run_variants`
VARIANTS = ["bce", "reference", "gce q=0.4", "gce q=0.7", "bootstrap", "small-loss drop 0.1",
            "small-loss drop 0.2", "folds 8", "folds 16", "3 splits", "round 2 hide", "round 2 flip"]


def train_head(x, labels, *, loss: str = "bce", q: float = 0.7, beta: float = 0.8, drop: float = 0.0,
               epochs: int, lr: float, batch_size: int, weight_decay: float = 1e-4, seed: int = 0):
    """A linear head on features ``x`` (n, D) float32, ``labels`` (n, K) int8 with -1
    unknown (masked out of the loss); returns the trained ``torch.nn.Linear``."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.float32))
    head = torch.nn.Linear(x.shape[1], labels.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for b in range(0, len(x), batch_size):
            i = perm[b:b + batch_size]
            y, z = yt[i], head(xt[i])
            mask = (y >= 0).float()
            target = y.clamp(min=0)
            if loss == "gce":
                p = torch.sigmoid(z)
                p_given = torch.where(target > 0.5, p, 1 - p).clamp(min=1e-7)
                cell = (1 - p_given ** q) / q
            else:
                if loss == "bootstrap":
                    target = beta * target + (1 - beta) * (torch.sigmoid(z).detach() > 0.5).float()
                cell = F.binary_cross_entropy_with_logits(z, target, reduction="none")
            if drop > 0:
                share = drop * min(1.0, (epoch + 1) / 10)
                c = cell.detach()
                for value in (0, 1):
                    group = (y == value)
                    if int(group.sum()) > 4:
                        cut = torch.quantile(c[group], 1 - share)
                        mask = mask * (~(group & (c > cut))).float()
            step_loss = (cell * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad()
            step_loss.backward()
            opt.step()
            sched.step()
    return head


def heldout(x, labels, folds, **kw) -> np.ndarray:
    """(N, K) float64: each row's probability from the head that did not train on its fold."""
    import torch

    probs = np.zeros(labels.shape)
    for f in np.unique(folds):
        head = train_head(x[folds != f], labels[folds != f], seed=int(f), **kw)
        with torch.no_grad():
            probs[folds == f] = torch.sigmoid(head(torch.from_numpy(x[folds == f]))).numpy()
    return probs


def random_folds(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % k)


def hide_or_flip(labels, probs, how: str, share: float = 0.2) -> np.ndarray:
    """Round 2's labels: per class and given value, the ``share`` most doubtful cells
    (|y - p|, above 0.5 too) hidden (-1) or flipped."""
    out = labels.copy()
    doubt = np.abs(labels - probs)
    for k in range(labels.shape[1]):
        for value in (0, 1):
            group = labels[:, k] == value
            if group.sum() < 5:
                continue
            cut = np.quantile(doubt[group, k], 1 - share)
            pick = group & (doubt[:, k] > cut) & (doubt[:, k] > 0.5)
            out[pick, k] = -1 if how == "hide" else 1 - value
    return out


def run_variants(x, noisy, true, folds, recipe: dict) -> dict[str, np.ndarray]:
    """Held-out probabilities of every variant of :data:`VARIANTS`."""
    kw = dict(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"])
    out = {"bce": heldout(x, noisy, folds, **kw), "reference": heldout(x, true, folds, **kw)}
    for q in (0.4, 0.7):
        out[f"gce q={q}"] = heldout(x, noisy, folds, loss="gce", q=q, **kw)
    out["bootstrap"] = heldout(x, noisy, folds, loss="bootstrap", **kw)
    for drop in (0.1, 0.2):
        out[f"small-loss drop {drop}"] = heldout(x, noisy, folds, drop=drop, **kw)
    for k in (8, 16):
        out[f"folds {k}"] = heldout(x, noisy, random_folds(len(x), k, seed=k), **kw)
    k = len(np.unique(folds))
    out["3 splits"] = (out["bce"] + sum(heldout(x, noisy, random_folds(len(x), k, seed=s), **kw)
                                        for s in (1, 2))) / 3
    for how in ("hide", "flip"):
        second = heldout(x, hide_or_flip(noisy, out["bce"], how), folds, **kw)
        out[f"round 2 {how}"] = (out["bce"] + second) / 2
    return out


def main(argv=None) -> int:
    from labelfix.bench.metrics import average_precision, error_cells

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="a benchmarks/detection.py output folder with frozen runs")
    ap.add_argument("--noises", default="flip_0.2,mislabel_0.4", help="run folders' noise tags")
    ap.add_argument("--name", default="frozen_heads")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for dataset, _, tag, seed, run, true in detection_runs(args.runs, ["frozen"], args.noises.split(",")):
        if not (run / "features" / "train.npy").exists():
            raise SystemExit(f"{run}: no stored features (features/train.npy); run detection.py --modes frozen")
        noisy = np.load(run / "labels.npy")
        x = np.load(run / "features" / "train.npy").astype(np.float32)
        errors = error_cells(noisy, true)
        probs = run_variants(x, noisy, true, np.load(run / "folds.npy"), mode_options("frozen", dataset))
        for name in VARIANTS:
            rows.append({"dataset": dataset, "noise": tag, "seed": seed,
                         "variant": name, "ap": average_precision(errors, np.abs(noisy - probs[name]))})
        print(f"{dataset} {tag} seed{seed}: " + ", ".join(
            f"{r['variant']} {r['ap']:.3f}" for r in rows[-len(VARIANTS):]), flush=True)
    frame = pd.DataFrame(rows)
    write_results(args.name, frame, markdown(frame, time.perf_counter() - t0, argv))
    return 0


def markdown(frame: pd.DataFrame, seconds: float, argv) -> str:
    mean = frame.groupby(["dataset", "noise", "variant"], sort=False)["ap"].mean().unstack("variant")[VARIANTS]
    head = ["dataset", "noise"] + VARIANTS
    lines = ["# Frozen heads: what the usual noisy-label remedies recover of the reference's room", "",
             "Per-cell AP of self-confidence on the held-out probabilities of a plain linear head on the stored "
             "frozen features, mean over the seeds found; `reference` trained on the true labels. "
             "benchmarks/frozen_heads.py names each variant's source.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, noise), r in mean.iterrows():
        lines.append(f"| {dataset} | {noise} | " + " | ".join(f"{r[v]:.3f}" for v in VARIANTS) + " |")
    cmd = shlex.join(["python", "benchmarks/frozen_heads.py"] + list(sys.argv[1:] if argv is None else argv))
    return "\n".join(lines + ["", f"Command: `{cmd}`; {seconds:.0f} s."]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
