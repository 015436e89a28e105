"""The end of every epoch: the evaluation pass over all N images, validation mAP,
``metrics.csv``, ``best.pt`` and the mixer's per-epoch hook.

``stats/state.json`` marks a finished epoch as complete, so a run killed during this work
redoes it on resume (recording an epoch into the loss mean is idempotent, ``stats.py``).
Every function takes the :class:`~labelfix.train.engine.Trainer` ``t``; under torchrun
each rank scores its shard and the results are all-gathered, so every rank holds the
statistics of the whole dataset.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter

import numpy as np
import pandas as pd
import torch

from labelfix.io import atomic
from labelfix.io.arrays import load_npy
from labelfix.train import stats as stats_mod
from labelfix.train.checkpoint import native
from labelfix.train.data import HELD_OUT, make_loader
from labelfix.train.distributed import all_gather_object, all_gather_tensor, barrier, broadcast_object
from labelfix.train.metrics import map_report
from labelfix.train.sampler import ShardSampler


def _gather(t, logits, indices, valid):
    """Concatenate every rank's padded batch (each rank sends ``batch_size`` rows)."""
    k = logits.shape[1] if logits.dim() == 2 else t.labelset.num_classes
    pad = t.cfg.batch_size - logits.shape[0]
    dev = t.device
    logits = torch.cat([logits.to(dev), torch.zeros(pad, k, device=dev)])
    indices = torch.cat([indices.to(dev), torch.zeros(pad, dtype=torch.long, device=dev)])
    valid = torch.cat([valid.to(dev), torch.zeros(pad, dtype=torch.bool, device=dev)])
    return (all_gather_tensor(logits, t.dist), all_gather_tensor(indices, t.dist),
            all_gather_tensor(valid, t.dist))


def score(t, model, dataset, rows: np.ndarray, out: np.ndarray, tag: int) -> list[int]:
    """Score ``rows`` of ``dataset`` with ``model`` into ``out`` (N, K) (every rank gets
    every row). Items of shape (V, ...) are scored as the mean probability over V views;
    otherwise ``out`` receives logits. Returns the rows that failed to decode."""
    sampler = ShardSampler(rows, t.cfg.batch_size, t.dist.world_size, t.dist.rank, seed=t.cfg.seed, tag=tag)
    loader = make_loader(dataset, sampler, t.cfg.loader_workers, pin_memory=t.device.type == "cuda")
    model.eval()

    def forward(images):
        if images.dim() == 5:   # (B, V, 3, H, W): mean probability over the V views
            b, v = images.shape[:2]
            with t.autocast():
                logits = t.forward(model, t.to_device(images.flatten(0, 1)))
            return torch.sigmoid(logits.float().view(b, v, -1)).mean(1)
        with t.autocast():
            return t.forward(model, t.to_device(images))

    def batches():
        for step, (images, _labels, indices, _slots, failed, positions, _views) in enumerate(loader):
            valid = positions < sampler.valid_count(step)[t.dist.rank]
            yield images, indices, failed, valid   # padded duplicates of a failed image are harmless

    gather = (lambda *a: _gather(t, *a)) if t.dist.enabled else None
    failed = stats_mod.score_batches(batches(), forward, out, gather=gather)
    if t.dist.enabled:
        failed = sorted({i for part in all_gather_object(failed, t.dist) for i in part})
        for i in failed:
            out[i] = np.nan
    return failed


def epoch_rows(t, epoch: int) -> np.ndarray:
    """The rows the evaluation pass of ``epoch`` scores: all N, except in a cross-fitted
    fold model (it has held-out rows, split 2) before its last epoch, whose statistics
    are used only on its held-out rows (``labelfix.train.crossfit.merge_round``): then
    the held-out and validation rows, unless the mixer reads the training rows' logits;
    with ``--no-dynamics`` (no loss over the epochs wanted) the validation rows only.
    The other rows stay NaN in ``stats/logits.npy`` until the last epoch (so their
    ``loss_mean`` is the last epoch's loss and the ``stats_loss`` column is NaN); on the
    demo (3 folds) a fold model scores 400 of the 1,200 rows in 19 of its 20 passes."""
    n = t.labels.shape[0]
    held_out = np.flatnonzero(t.split == HELD_OUT)
    if not held_out.size or epoch + 1 >= t.cfg.epochs or t.mixer.needs_training_logits(epoch):
        return np.arange(n)
    return np.flatnonzero(t.split != 0) if t.cfg.dynamics else np.flatnonzero(t.split == 1)


def finalize_epoch(t, epoch: int, train_info: dict, record_mean: bool) -> dict:
    """Evaluation pass, statistics, metrics row, best.pt and the mixer's hook; returns
    the epoch's metrics row."""
    n, k = t.labels.shape
    stats_dir = t.out / "stats"
    t0 = time.perf_counter()
    state = broadcast_object(stats_mod.read_state(stats_dir) if t.dist.is_main else None, t.dist)
    logits_path = stats_dir / "logits.npy" if t.dist.is_main else None
    rows = epoch_rows(t, epoch)
    with stats_mod.array_sink(logits_path, (n, k), np.float16, fill=None if rows.size == n else np.nan) as sink:
        failed = score(t, t.model, t.eval_ds, rows, sink, tag=1) if rows.size else []
        if not t.dist.is_main:
            t._logits_mem = sink
    for i in failed:
        t.skipped.setdefault(int(i), epoch + 1)
    if t.dist.enabled:   # every rank only saw its own training failures
        merged: dict[int, int] = {}
        for part in all_gather_object(t.skipped, t.dist):
            for i, ep in part.items():
                merged[int(i)] = min(int(ep), merged.get(int(i), int(ep)))
        t.skipped = merged
    logits = load_npy(stats_dir / "logits.npy", mmap_mode="r") if t.dist.is_main else t._logits_mem
    record = record_mean and epoch > int(state["last_epoch"])
    recorded = int(state["epochs_recorded"]) + (1 if record else 0)
    if t.dist.is_main:
        if record:
            stats_mod.update_loss_mean(stats_dir, logits, t.labels, recorded - 1)
        stats_mod.write_state(stats_dir, recorded, epoch, complete=False)
        if hasattr(t.loss_fn, "estimates"):
            from labelfix.numeric import logit

            est = t.loss_fn.estimates().detach().cpu().numpy()
            atomic.write_npy(stats_dir / "role_logits.npy", logit(est).astype(np.float16))
    stats_seconds = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "train_loss": train_info["train_loss"],
           "stats_loss": stats_mod.known_mean_loss(logits, t.labels, t.train_rows)}
    row.update(validation(t, logits))
    t1 = time.perf_counter()
    row.update(t.mixer.on_epoch_end(epoch, logits, fresh=True))
    row.update({"lr": float(t.optimizer.param_groups[0]["lr"]),
                "seconds": train_info["train_seconds"] + (time.perf_counter() - t0),
                "train_seconds": train_info["train_seconds"], "stats_seconds": stats_seconds,
                "mixer_seconds": time.perf_counter() - t1,
                "images_per_s": train_info["images"] / max(train_info["train_seconds"], 1e-9),
                "skipped_images": len(t.skipped)})
    t.metrics_rows = [r for r in t.metrics_rows if r["epoch"] < epoch + 1] + [row]
    value = row.get("val_map_ema", row.get("val_map", float("nan")))
    if t.dist.is_main:
        atomic.write_csv(t.out / "metrics.csv", pd.DataFrame(t.metrics_rows))
        write_skipped(t, epoch)
        if math.isnan(value) or value > t.best_map:
            # without validation data best.pt is the latest checkpoint (documented)
            with atomic.atomic_path(t.out / "checkpoints" / "best.pt") as tmp:
                shutil.copyfile(t.out / "checkpoints" / "last.pt", tmp)
        stats_mod.write_state(stats_dir, recorded, epoch, complete=True)
    if not math.isnan(value):
        t.best_map = max(t.best_map, value)
    barrier(t.dist)
    return row


def eval_models(t):
    yield "", t.model
    if t.ema is not None:
        yield "_ema", t.ema.module


def validation(t, logits) -> dict:
    """Validation mAP (overall and per class group) from the evaluation pass (held-out
    split) or a pass over ``--val``; with EMA also the EMA model's mAP."""
    out = {}
    if t.val_set is not None:
        n, k = t.val_set.labels.shape
        for name, model in eval_models(t):
            scores = np.empty((n, k), dtype=np.float32)
            score(t, model, t.val_ds, np.arange(n), scores, tag=2)
            rep = map_report(np.nan_to_num(scores, nan=0.0), np.asarray(t.val_set.labels), t.groups)
            out.update({f"val_{key}{name}": v for key, v in rep.items()})
    elif t.val_rows.size:
        labels = t.labels[t.val_rows]
        for name, model in eval_models(t):
            if model is t.model:
                scores = np.asarray(logits[t.val_rows], dtype=np.float32)
            else:
                full = np.empty(t.labels.shape, dtype=np.float32)
                score(t, model, t.eval_ds, t.val_rows, full, tag=1)
                scores = full[t.val_rows]
            rep = map_report(np.nan_to_num(scores, nan=0.0), labels, t.groups)
            out.update({f"val_{key}{name}": v for key, v in rep.items()})
    return out


def resume_finalize(t) -> None:
    """Bring the statistics and the mixer's state to the checkpoint's epoch: redo the
    end-of-epoch work if it was interrupted, else rebuild the in-memory state."""
    if t.epoch == 0:
        return
    e = t.epoch - 1
    state = stats_mod.read_state(t.out / "stats") if t.dist.is_main else None
    disk_rows = metrics_rows_from_disk(t) if t.dist.is_main else None
    state, disk_rows = broadcast_object((state, disk_rows), t.dist)
    done = (int(state["last_epoch"]) == e and bool(state.get("complete"))
            and any(int(r["epoch"]) == e + 1 for r in disk_rows))
    if not done:
        finalize_epoch(t, e, t.last_train_info, record_mean=True)
        return
    t.metrics_rows = [native(r) for r in disk_rows if int(r["epoch"]) <= e + 1]
    values = [r.get("val_map_ema", r.get("val_map", float("nan"))) for r in t.metrics_rows]
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    t.best_map = max(values) if values else -math.inf
    if t.dist.is_main and (t.out / "skipped_images.csv").exists():
        frame = pd.read_csv(t.out / "skipped_images.csv")
        t.skipped = {int(i): int(f) for i, f in zip(frame["index"], frame["first_epoch"])}
    t.skipped = broadcast_object(t.skipped, t.dist)
    logits = broadcast_object(load_npy(t.out / "stats" / "logits.npy") if t.dist.is_main else None, t.dist)
    t.mixer.on_epoch_end(e, logits, fresh=False)


def metrics_rows_from_disk(t) -> list[dict]:
    path = t.out / "metrics.csv"
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def skip_reasons(labelset, indices, cache: dict[int, str] | None = None) -> dict[int, str]:
    """Why each skipped image could not be read (dataset index -> reason), for the dataset
    indices ``indices`` of ``labelset``: ``missing``, a file that is not an image file or
    leads outside the image folder (the refusal's words), else ``failed to decode`` (it
    opens but does not decode). One file-system lookup per image, once per image when the
    caller keeps a ``cache`` (a trainer's ``skip_reason_cache``, filled here)."""
    from labelfix.data.image import image_problem

    cache = {} if cache is None else cache
    for i in map(int, indices):
        if i not in cache:
            cache[i] = image_problem(labelset.image_path(i), labelset.image_root) or "failed to decode"
    return {int(i): cache[int(i)] for i in indices}


def skipped_summary(reasons) -> str:
    """``N image(s) could not be read and were skipped (M missing, K failed to decode)``
    from the reasons (str, one per image: :func:`skip_reasons`)."""
    counts = Counter(reasons)
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda rn: (-rn[1], rn[0])))
    return f"{sum(counts.values())} image(s) could not be read and were skipped ({parts})"


def write_skipped(t, epoch: int) -> None:
    """``skipped_images.csv``: every image that could not be read, why
    (:func:`skip_reasons`) and the epoch first seen; rewritten only after an ``epoch``
    that met a new one (the list only grows), or when the file is not there."""
    path = t.out / "skipped_images.csv"
    if not t.skipped or (path.exists() and epoch + 1 not in t.skipped.values()):
        return
    idx = sorted(t.skipped)
    images = t.labelset.images
    reasons = skip_reasons(t.labelset, idx, t.skip_reason_cache)
    atomic.write_csv(path, pd.DataFrame({
        "index": idx,
        "image_id": [int(images.at[i, "image_id"]) for i in idx],
        "file_name": [str(images.at[i, "file_name"]) for i in idx],
        "reason": [reasons[i] for i in idx],
        "first_epoch": [t.skipped[i] for i in idx],
    }))
