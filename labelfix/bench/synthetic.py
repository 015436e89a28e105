"""Synthetic large datasets for scale and reliability benchmarks.

:func:`make_synthetic_run` writes a labelfix run directory (docs/internals.md, "Run
directory") of any size without holding an (N, K) array in memory: labels, logits and
per-cell losses are generated and written in row chunks through
:func:`labelfix.io.atomic.atomic_memmap`. :func:`write_synthetic_coco` writes the same
labels as an LVIS-style COCO JSON, streamed.

Generative model (chosen here, not from a paper):
- class popularity p_k proportional to (k + 1) ** -0.5 (a mild long tail);
- true positives per image: 1 + Poisson(``pos_per_image`` - 1) draws from p (duplicates
  collapse, so the mean is slightly below ``pos_per_image``);
- ``neg_per_image`` classes drawn uniformly are verified negatives (where not positive);
  every other cell is unknown (a partially labeled dataset);
- given labels = true labels with a fraction ``noise`` of positives turned into
  negatives (missing labels) and as many verified negatives turned into positives;
- logits: N(+2, 1.5) on true positives, N(-3, 1.5) elsewhere, stored float16;
- loss_mean: BCE-with-logits of those logits against the given label (unknown cells:
  against 0, as training records it), float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK, LabelSet

CHUNK_ROWS = 16384


def _popularity(n_classes: int) -> np.ndarray:
    p = (np.arange(n_classes) + 1.0) ** -0.5
    return p / p.sum()


def synthetic_chunk(start: int, stop: int, n_classes: int, seed: int, pos_per_image: float = 3.0,
                    neg_per_image: int = 5, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """True and given labels of rows ``start:stop``, each int8 (stop - start, n_classes).

    Deterministic in (start, seed) so chunks can be generated in any order.
    """
    rng = np.random.default_rng([seed, start])
    b = stop - start
    rows = np.arange(b)
    truth = np.full((b, n_classes), UNK, np.int8)
    neg_cols = rng.integers(0, n_classes, size=(b, neg_per_image))
    truth[rows[:, None], neg_cols] = NEG
    n_pos = np.minimum(1 + rng.poisson(max(pos_per_image - 1.0, 0.0), size=b), n_classes)
    width = int(n_pos.max()) if b else 0
    pos_cols = rng.choice(n_classes, size=(b, width), p=_popularity(n_classes))
    keep = np.arange(width)[None, :] < n_pos[:, None]
    truth[np.repeat(rows, width)[keep.ravel()], pos_cols[keep]] = POS
    given = truth.copy()
    flip_pos = (truth == POS) & (rng.random(truth.shape, dtype=np.float32) < noise)
    n_flip = int(flip_pos.sum())
    given[flip_pos] = NEG
    neg_r, neg_c = np.nonzero(truth == NEG)
    if n_flip and len(neg_r):
        pick = rng.choice(len(neg_r), size=min(n_flip, len(neg_r)), replace=False)
        given[neg_r[pick], neg_c[pick]] = POS
    return truth, given


def make_synthetic_run(out_dir: str | Path, n_images: int, n_classes: int, seed: int = 0, *,
                       pos_per_image: float = 3.0, neg_per_image: int = 5, noise: float = 0.05,
                       chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write a synthetic run directory: the LabelSet (``LabelSet.save``), ``split.npy``,
    ``stats/logits.npy`` float16 (N, K), ``stats/loss_mean.npy`` float32 (N, K) and
    ``stats/state.json``. Memory use is O(chunk_rows * n_classes). Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, k = int(n_images), int(n_classes)
    scratch = out / ".synthetic-labels.npy"
    labels = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.int8, shape=(n, k))
    try:
        with atomic.atomic_memmap(out / "stats" / "logits.npy", (n, k), np.float16) as logits, \
                atomic.atomic_memmap(out / "stats" / "loss_mean.npy", (n, k), np.float32) as loss:
            for s in range(0, n, chunk_rows):
                e = min(s + chunk_rows, n)
                truth, given = synthetic_chunk(s, e, k, seed, pos_per_image, neg_per_image, noise)
                labels[s:e] = given
                rng = np.random.default_rng([seed, s, 1])
                x = rng.standard_normal((e - s, k), dtype=np.float32)
                x *= 1.5
                x += np.where(truth == POS, np.float32(2.0), np.float32(-3.0))
                logits[s:e] = x
                # BCE with logits: softplus(x) - y * x, y = 1 for given positives else 0
                bce = np.logaddexp(np.float32(0), x)
                bce -= np.where(given == POS, x, np.float32(0))
                loss[s:e] = bce
        labels.flush()
        images = pd.DataFrame({
            "image_id": np.arange(1, n + 1, dtype=np.int64),
            "file_name": pd.Series(np.arange(1, n + 1)).map("images/{:08d}.jpg".format),
            "width": np.full(n, 640, np.int64),
            "height": np.full(n, 480, np.int64),
        })
        classes = pd.DataFrame({"name": [f"class{c:05d}" for c in range(k)],
                                "category_id": np.arange(1, k + 1, dtype=np.int64)})
        source = {"path": None, "format": "synthetic", "seed": int(seed), "pos_per_image": pos_per_image,
                  "neg_per_image": neg_per_image, "noise": noise}
        ls = LabelSet(labels, images, classes, out / "images", source)
        ls.save(out)
        del ls, labels
    finally:
        scratch.unlink(missing_ok=True)
    atomic.write_npy(out / "split.npy", np.zeros(n, np.int8))
    atomic.write_json(out / "stats" / "state.json", {"epochs_recorded": 1, "last_epoch": 0, "complete": True})
    return out


def write_synthetic_coco(labelset: LabelSet, path: str | Path, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Stream ``labelset`` to an LVIS-style COCO JSON: an image-level annotation per
    positive, ``neg_category_ids`` per image, every other cell unknown; reads back to the
    same matrix with :func:`labelfix.io.coco.read_coco`. Memory O(chunk_rows * K)."""
    path = Path(path)
    cat_ids = labelset.classes["category_id"].to_numpy()
    img_ids = labelset.images["image_id"].to_numpy()
    names = labelset.images["file_name"].astype(str).to_numpy()
    widths = labelset.images["width"].to_numpy().tolist()
    heights = labelset.images["height"].to_numpy().tolist()
    dumps = json.dumps
    with atomic.atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write('{"info":{"description":"labelfix synthetic"},"licenses":[],"categories":')
        fh.write(dumps([{"id": int(c), "name": str(nm)} for c, nm in zip(cat_ids, labelset.classes["name"])]))
        fh.write(',"labelfix":{"unlabeled":"unknown"},"images":[')
        for s in range(0, labelset.num_images, chunk_rows):
            block = np.asarray(labelset.labels[s:s + chunk_rows])
            parts = []
            for r in range(len(block)):
                negs = ",".join(map(str, cat_ids[block[r] == NEG].tolist()))
                w, h = widths[s + r], heights[s + r]
                parts.append(f'{{"id":{int(img_ids[s + r])},"file_name":{dumps(names[s + r])},'
                             f'"width":{w},"height":{h},"neg_category_ids":[{negs}]}}')
            fh.write(("," if s else "") + ",".join(parts))
        fh.write('],"annotations":[')
        ann_id = 0
        for s in range(0, labelset.num_images, chunk_rows):
            rr, cc = np.nonzero(np.asarray(labelset.labels[s:s + chunk_rows]) == POS)
            ids = np.arange(ann_id + 1, ann_id + 1 + len(rr))
            parts = [f'{{"id":{a},"image_id":{i},"category_id":{c},"area":0.0,"iscrowd":0}}'
                     for a, i, c in zip(ids.tolist(), img_ids[s + rr].tolist(), cat_ids[cc].tolist())]
            if parts:
                fh.write(("," if ann_id else "") + ",".join(parts))
            ann_id += len(rr)
        fh.write("]}\n")
    return path
