"""Image embeddings: the pooled backbone features of every image, written once into a
memory-mapped array (``--frozen`` trains heads on them; ``labelfix clean`` finds each
image's neighbours with them).

``embed(model, dataset, path, ...)`` writes ``path`` = float16 (N, D) chunk by chunk and
records its progress in ``path.with_suffix(".json")``; an interrupted call resumes at the
first unfinished chunk, and the array is renamed into place only when complete. Rows of
images that fail to decode are NaN. :class:`FeatureDataset` serves rows of such an
array to the training engine the way ``KeyedDataset`` serves images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from labelfix.errors import LabelfixError, first_line
from labelfix.io import atomic
from labelfix.labels import LabelSet
from labelfix.io.arrays import load_npy
from labelfix.train.sampler import SampleKey

#: images per chunk between two progress records
CHUNK = 1024


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(B, D) from a backbone output: pooled (B, D) as is, a map (B, D, h, w) or tokens
    (B, L, D) averaged over their positions."""
    if features.dim() == 4:
        return features.mean((2, 3))
    if features.dim() == 3:
        return features.mean(1)
    return features


def feature_info(path: Path) -> dict:
    """The progress record of the embedding at ``path`` (``<path>.json``: rows_done,
    complete, meta; {} when there is none). A record that is not a JSON object is one
    line naming it."""
    p = Path(path).with_suffix(".json")
    if not p.exists():
        return {}
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelfixError(f"{p}: corrupt embedding record ({first_line(err)}); remove it and its "
                            f"{Path(path).name} to embed again") from None
    if not isinstance(info, dict):
        raise LabelfixError(f"{p}: corrupt embedding record (expected a JSON object); remove it and its "
                            f"{Path(path).name} to embed again")
    return info


def embed(forward: Callable[[torch.Tensor], torch.Tensor], batches: Callable[[np.ndarray], object],
          n: int, dim: int, path: Path, *, meta: dict, progress: Callable[[int, int], None] | None = None,
          replace_stale: bool = False, announce: Callable[[], None] | None = None) -> np.ndarray:
    """Write the (n, dim) float16 embedding of ``n`` images to ``path`` (resumable).

    Args:
        forward: images (B, ...) -> pooled features float (B, dim).
        batches: rows -> iterable of ``(images or None, indices, failed)``.
        meta: what the embedding depends on (backbone, weights, image size...); a partial
            file made with other ``meta`` is discarded, a complete one refused (or, with
            ``replace_stale``, recomputed: a run's final-model embedding after more epochs).
        progress: called with (rows done, n) after every chunk.
        announce: called once when the images are embedded (not when a complete file is reused).
    Returns the read-only memmap of the complete array.
    """
    path = Path(path)
    info_path = path.with_suffix(".json")
    partial = path.with_name(path.name + ".partial")
    info = feature_info(path)
    if info.get("complete") and path.exists() and (info.get("meta") == meta or not replace_stale):
        if info.get("meta") != meta:
            raise LabelfixError(f"{path}: embeddings of another model or image size ({info.get('meta')}); "
                                f"remove the folder or use another --out")
        return load_npy(path, mmap_mode="r")
    if announce is not None:
        announce()
    path.parent.mkdir(parents=True, exist_ok=True)
    done = int(info.get("rows_done", 0)) if info.get("meta") == meta and partial.exists() else 0
    if done == 0:
        arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, dim))
    else:
        arr = load_npy(partial, mmap_mode="r+")
        if arr.shape != (n, dim):
            raise LabelfixError(f"{partial}: shape {arr.shape}, expected {(n, dim)}; remove it and start again")
    with torch.no_grad():
        for start in range(done, n, CHUNK):
            rows = np.arange(start, min(n, start + CHUNK))
            for images, indices, failed in batches(rows):
                if len(failed):
                    arr[np.asarray(failed)] = np.nan
                if images is not None:
                    arr[indices.numpy()] = forward(images).float().cpu().numpy().astype(np.float16)
            arr.flush()
            atomic.write_json(info_path, {"rows_done": int(rows[-1]) + 1, "complete": False, "meta": meta})
            if progress is not None:
                progress(int(rows[-1]) + 1, n)
    del arr
    os.replace(partial, path)
    atomic.write_json(info_path, {"rows_done": n, "complete": True, "meta": meta})
    return load_npy(path, mmap_mode="r")


class FeatureDataset(Dataset):
    """``dataset[SampleKey]`` -> ``(features (D,) float32 or None, labels (K,) int8,
    index, slot, views or None)`` from an (N, D) array; NaN rows (images that failed to
    decode) come back as None. ``views``: copies of the vector (features have no
    augmentation), so BalanceMix's re-labeling views score the vector itself."""

    def __init__(self, labelset: LabelSet, features: np.ndarray, views: int = 0):
        if features.shape[0] != labelset.num_images:
            raise LabelfixError(f"features: {features.shape[0]} rows for {labelset.num_images} images")
        self.labelset, self.features, self.views = labelset, features, int(views)

    def __len__(self) -> int:
        return self.labelset.num_images

    def __getitem__(self, key: SampleKey):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[SampleKey]) -> list:
        """Batched reads (torch's DataLoader calls this with a whole batch of keys)."""
        idx = np.array([k.index for k in keys], dtype=np.int64)
        order = np.argsort(idx)
        feats = np.empty((idx.size, self.features.shape[1]), dtype=np.float32)
        feats[order] = self.features[idx[order]]
        labels = np.asarray(self.labelset.labels[idx], dtype=np.int8)
        out = []
        for j, key in enumerate(keys):
            if not np.isfinite(feats[j]).all():
                out.append((None, None, int(key.index), int(key.slot), None))
                continue
            x = torch.from_numpy(feats[j])
            views = x.expand(self.views, -1).clone() if self.views else None
            out.append((x, torch.from_numpy(labels[j]), int(key.index), int(key.slot), views))
        return out


def _images_fingerprint(labelset: LabelSet) -> str:
    """sha256 of what an embedding depends on in a label set: its image records and root."""
    import hashlib

    import pandas as pd

    h = hashlib.sha256(str(labelset.image_root).encode())
    h.update(pd.util.hash_pandas_object(labelset.images[["image_id", "file_name"]], index=False).values.tobytes())
    return h.hexdigest()


def embed_run(t, folder: Path, names: tuple[str, ...] = ("train", "val")) -> dict:
    """Embed the images of trainer ``t``'s run with its model's backbone into
    ``folder/<name>.npy``: "train" (the run's N images) and "val" (``--val`` images, when
    given) for ``--frozen``; "embeddings" (the N images, final weights) for the neighbour
    evidence of ``labelfix clean``. Rank 0 embeds, the other ranks wait and read.
    Returns {name: float16 memmap}."""
    from labelfix.train.data import KeyedDataset, make_loader
    from labelfix.train.distributed import barrier
    from labelfix.train.sampler import ShardSampler

    cfg = t.cfg
    model = t.model
    meta = {"backbone": cfg.backbone, "img_size": int(cfg.img_size),
            "weights": (t.weights_info or {}).get("sha256") or ("hub" if cfg.pretrained else "random-init")}
    out = {}
    for name in names:
        labelset = t.val_set if name == "val" else t.labelset
        if labelset is None:
            out[name] = None
            continue
        info = dict(meta, images=_images_fingerprint(labelset))
        if name == "embeddings":
            info.update(run=t.run_fingerprint, epoch=int(t.epoch))
        path = Path(folder) / f"{name}.npy"
        if t.dist.is_main:
            # the final embedding reuses the evaluation pass's decoded images
            cache = getattr(getattr(t, "eval_ds", None), "cache", None) if name == "embeddings" else None
            ds = KeyedDataset(labelset, t.eval_tf, random=False, cache=cache)

            def batches(rows, ds=ds):
                loader = make_loader(ds, ShardSampler(rows, cfg.batch_size), cfg.loader_workers,
                                     pin_memory=t.device.type == "cuda")
                for images, _labels, indices, _slots, failed, _pos, _views in loader:
                    yield images, indices, failed

            def forward(images):
                with t.autocast():
                    return pooled(model.forward_features(t.to_device(images)))

            model.eval()
            last = [0]

            def report(done, n):
                if done - last[0] >= max(CHUNK, n // 10) or done == n:
                    last[0] = done
                    t.log(f"  embedded {done}/{n}")

            def announce(n=labelset.num_images, path=path, frozen=cfg.frozen and name != "embeddings"):
                t.log(f"embedding {n} images -> {path}")
                if frozen and meta["weights"] == "random-init":   # allowed (tests, smoke runs), rarely meant
                    t.log("note: --frozen with a randomly initialised backbone (--no-pretrained and no --weights): "
                          "the heads train on random features; pass --weights FILE or --pretrained for evidence "
                          "worth reviewing")

            embed(forward, batches, labelset.num_images, int(model.backbone.num_features), path, meta=info,
                  progress=report, replace_stale=name == "embeddings", announce=announce)
        barrier(t.dist)
        out[name] = load_npy(path, mmap_mode="r")
    return out
