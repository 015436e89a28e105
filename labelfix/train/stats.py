"""Per-cell label statistics: the evaluation pass over all N images of every epoch.

After each training epoch the model scores every image once, without augmentation.
The run directory keeps (see docs/internals.md, "Run directory"):

- ``stats/logits.npy``  float16 (N, K): the latest pass's logits (NaN rows for images
  that failed to decode);
- ``stats/loss_mean.npy`` float32 (N, K): running mean over recorded epochs of the
  per-cell BCE against the given label (unknown cells: against 0);
- ``stats/state.json``: ``{"epochs_recorded", "last_epoch", "complete"}``.

All arrays are written through ``labelfix.io.atomic.atomic_memmap`` in row chunks, so an
N x K matrix never has to fit in memory twice and an interrupted write leaves the
previous file. Recording epoch ``e`` into the mean is idempotent: it only happens when
``e > last_epoch``, so redoing a pass after an interruption does not count it twice.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from labelfix.io import atomic
from labelfix.numeric import bce_logits
from labelfix.io.arrays import load_npy

CHUNK_ROWS = 65536


#: per-cell BCE of logits (B, K) against the given labels (unknown scored against 0)
cell_bce = bce_logits


def read_state(stats_dir: str | Path) -> dict:
    """``stats/state.json`` (checked: ``labelfix.run.read_stats_state``) or the empty state."""
    from labelfix.run import read_stats_state

    path = Path(stats_dir) / "state.json"
    if path.exists():
        return read_stats_state(path)
    return {"epochs_recorded": 0, "last_epoch": -1, "complete": False}


def write_state(stats_dir: str | Path, epochs_recorded: int, last_epoch: int, complete: bool,
                rounds: int | None = None) -> None:
    """``stats/state.json``; ``rounds`` (cross-fitted runs) marks statistics merged from
    held-out folds, ``"out_of_sample": true``, and says how many rounds were trained."""
    state = {"epochs_recorded": int(epochs_recorded), "last_epoch": int(last_epoch), "complete": bool(complete)}
    if rounds is not None:
        state.update(out_of_sample=True, rounds=int(rounds))
    atomic.write_json(Path(stats_dir) / "state.json", state)


@contextlib.contextmanager
def array_sink(path: Path | None, shape: tuple[int, int], dtype, fill=None):
    """An (N, K) array to fill row-wise: an atomic memmap at ``path`` (renamed into place
    on success) or, with ``path=None`` (non-zero ranks), an in-memory array."""
    if path is None:
        arr = np.empty(shape, dtype=dtype)
        if fill is not None:
            arr[...] = fill
        yield arr
        return
    with atomic.atomic_memmap(path, shape, dtype, fill=fill) as arr:
        yield arr


@torch.no_grad()
def score_batches(batches: Iterable, forward: Callable[[torch.Tensor], torch.Tensor],
                  out: np.ndarray, gather: Callable | None = None, transform_out=None) -> list[int]:
    """Run ``forward`` over ``batches`` and write each image's row into ``out``.

    Args:
        batches: iterable of ``(images (B,3,H,W) or None, indices (B,) long,
            failed (F,) long, valid (B,) bool)``; ``valid`` False marks padding.
        forward: images -> logits (B, K) (model in eval mode, autocast as wanted).
        out: (N, K) array (memmap or numpy) indexed by dataset index.
        gather: optional ``(logits, indices, valid) -> (logits, indices, valid)`` that
            concatenates all ranks' tensors (distributed runs).
        transform_out: optional function applied to the float32 logits before storing
            (e.g. ``torch.sigmoid``).
    Returns:
        Sorted dataset indices that failed to decode (rows set to NaN).
    """
    failed: set[int] = set()
    k = out.shape[1]
    for images, indices, bad, valid in batches:
        failed.update(int(i) for i in bad.tolist())
        if images is None:
            logits = torch.zeros((0, k))
            indices = torch.zeros(0, dtype=torch.long)
            valid = torch.zeros(0, dtype=torch.bool)
        else:
            logits = forward(images).float()
        if gather is not None:
            logits, indices, valid = gather(logits, indices, valid)
        logits = logits.cpu()
        if transform_out is not None:
            logits = transform_out(logits)
        idx = indices.cpu().numpy()[valid.cpu().numpy()]
        vals = logits.numpy()[valid.cpu().numpy()]
        if idx.size:
            order = np.argsort(idx, kind="stable")
            out[idx[order]] = vals[order].astype(out.dtype)
    for i in sorted(failed):
        out[i] = np.nan
    return sorted(failed)


def update_loss_mean(stats_dir: Path, logits: np.ndarray, labels: np.ndarray, epochs_recorded: int) -> None:
    """Fold this epoch's per-cell BCE into ``stats/loss_mean.npy`` (epochs_recorded =
    count *before* this epoch). Rows whose logits are NaN keep their previous mean."""
    path = Path(stats_dir) / "loss_mean.npy"
    n, k = logits.shape
    old = load_npy(path, mmap_mode="r") if (epochs_recorded > 0 and path.exists()) else None
    with atomic.atomic_memmap(path, (n, k), np.float32) as new:
        for s in range(0, n, CHUNK_ROWS):
            loss = cell_bce(logits[s:s + CHUNK_ROWS], labels[s:s + CHUNK_ROWS])
            if old is None:
                new[s:s + CHUNK_ROWS] = np.nan_to_num(loss, nan=np.nan)
            else:
                prev = np.asarray(old[s:s + CHUNK_ROWS], dtype=np.float32)
                upd = prev + (loss - prev) / np.float32(epochs_recorded + 1)
                upd = np.where(np.isnan(loss), prev, upd)
                new[s:s + CHUNK_ROWS] = np.where(np.isnan(prev), loss, upd)
    del old


def known_mean_loss(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
    """Mean BCE over the known cells of ``rows`` (the training split), NaN rows skipped."""
    total, count = 0.0, 0
    for s in range(0, rows.size, CHUNK_ROWS):
        r = rows[s:s + CHUNK_ROWS]
        y = np.asarray(labels[r])
        loss = cell_bce(logits[r], y)
        m = (y >= 0) & ~np.isnan(loss)
        total += float(loss[m].sum())
        count += int(m.sum())
    return total / count if count else float("nan")
