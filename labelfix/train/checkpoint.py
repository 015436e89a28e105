"""Checkpoints, random-number states and resume checks of a training run.

``checkpoints/last.pt`` is written atomically after every epoch (keys: docs/internals.md).
It holds everything exact resume needs: weights, EMA, optimizer, schedule, loss state
(ROLE's table), AMP scaler, sampler state, and per rank the global RNG states plus the
mixer's generators. Every other random choice derives from ``(seed, epoch, position)``,
so a run killed at any point and resumed ends with the same weights (bit-for-bit on the
CPU). Loading uses ``torch.load(weights_only=True)``: a checkpoint never runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from pathlib import Path

import numpy as np
import torch

from labelfix.errors import LabelfixError, first_line
from labelfix.io import atomic
from labelfix.train.distributed import all_gather_object, barrier

#: options that may change on --resume (they do not change what is computed, or extend it)
RESUME_MUTABLE = {"epochs", "workers", "fold_workers", "device", "progress", "resume"}
#: options holding paths: compared after resolving them
PATH_OPTIONS = {"data", "out", "images", "val", "weights", "class_descriptions"}


class TrainingInterrupted(LabelfixError):
    """Ctrl-C during training; the message says how to resume."""


def interrupted(t, saved: int, finishing: bool) -> TrainingInterrupted:
    """The Ctrl-C error of run ``t``: ``saved`` is the epoch ``checkpoints/last.pt`` holds,
    ``finishing`` True while that epoch's evaluation pass ran (a resume runs it again)."""
    cfg = t.cfg
    if saved == 0:
        return TrainingInterrupted(f"{t.out}: interrupted during epoch 1, before any checkpoint; "
                                   f"start again with a new --out (or delete this one)")
    where = (f"in the evaluation pass after epoch {saved} (--resume runs it again)" if finishing
             else f"during epoch {saved + 1}")
    return TrainingInterrupted(f"{t.out}: interrupted {where}; checkpoints/last.pt holds epoch {saved}. "
                               f"Continue with: labelfix train {cfg.data} --out {cfg.out} --resume")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> dict:
    """Global RNG states (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.random.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def run_fingerprint(dataset_fingerprint: str, split: np.ndarray, seed: int) -> str:
    """sha256 of the dataset fingerprint, the split and the seed: a checkpoint resumes
    only the run it belongs to."""
    h = hashlib.sha256(dataset_fingerprint.encode())
    h.update(np.ascontiguousarray(split).tobytes())
    h.update(str(seed).encode())
    return h.hexdigest()


def native(row: dict) -> dict:
    """A metrics row with plain Python values (checkpoints load with weights_only)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        out[str(key)] = value
    return out


def build_checkpoint(t) -> dict:
    """The checkpoint dict of trainer ``t`` (a collective under torchrun: every rank calls it)."""
    rng = get_rng_state(t.device)
    rng.update(t.mixer.state_dict())
    ranks = all_gather_object(rng, t.dist)
    return {
        "model": t.model.state_dict(),
        "ema": t.ema.module.state_dict() if t.ema is not None else None,
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "epoch": t.epoch,
        "global_step": t.global_step,
        "rng": {"world_size": t.dist.world_size, "ranks": ranks},
        "sampler": t.sampler.state_dict(),
        "model_config": t.model_config,
        "classes": t.labelset.class_names,
        "run_fingerprint": t.run_fingerprint,
        # additions to the documented keys: state that exact resume needs
        "options": recorded_options(t.cfg),
        "loss": t.loss_fn.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "train_state": {"best_map": float(t.best_map), "skipped": dict(t.skipped),
                        "metrics": [native(r) for r in t.metrics_rows],
                        "last_train": native(t.last_train_info)},
    }


def save_checkpoint(t) -> None:
    """Write ``checkpoints/last.pt`` atomically (rank 0), then wait for every rank."""
    ckpt = build_checkpoint(t)
    if t.dist.is_main:
        with atomic.atomic_path(t.out / "checkpoints" / "last.pt") as tmp:
            torch.save(ckpt, tmp)
    barrier(t.dist)


def recorded_options(cfg) -> dict:
    """The options a checkpoint records (those a resume may not change: not
    :data:`RESUME_MUTABLE`, not paths, which move with a run), as plain values."""
    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else (
            {str(k): plain(x) for k, x in v.items()} if isinstance(v, dict) else v)

    return {k: plain(v) for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE | PATH_OPTIONS}


def _check_recorded_options(recorded, cfg, out: Path, path: Path) -> None:
    """A resume takes its options from ``RUN/config.yaml``, the optimizer and scheduler
    their state from the checkpoint: an option edited in config.yaml since (``lr: 0.5``)
    would be recorded but not trained with. Refused, naming it (checkpoints before
    2026-12-07 recorded no options: not checked)."""
    if not isinstance(recorded, dict):
        return
    now = recorded_options(cfg)
    unset = (None, "auto")   # filled on resume from what the run recorded (with_recorded_mixing)
    diff = [k for k in sorted(set(recorded) & set(now)) if not _same(k, recorded[k], now[k])
            and recorded[k] not in unset and now[k] not in unset]
    if diff:
        from labelfix.train.config import option_of

        said = ", ".join(f"{option_of(k)} {now[k]!r} (trained with {recorded[k]!r})" for k in diff)
        raise LabelfixError(f"{out / 'config.yaml'}: {said}: the file differs from the run's checkpoint {path.name} "
                            f"(edited after the run started?); restore the value, or start a new --out")


def load_checkpoint(t) -> None:
    """Restore trainer ``t`` from ``checkpoints/last.pt`` (one clear line if it cannot)."""
    path = t.out / "checkpoints" / "last.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        why = "the file is empty" if path.exists() and path.stat().st_size == 0 else first_line(err)
        raise LabelfixError(f"{path}: cannot read the checkpoint: {why}") from None
    if ckpt.get("run_fingerprint") != t.run_fingerprint:
        raise LabelfixError(f"{path}: run_fingerprint: the checkpoint belongs to other data, split or seed")
    _check_recorded_options(ckpt.get("options"), t.cfg, t.out, path)
    t.model.load_state_dict(ckpt["model"])
    if t.ema is not None:
        if ckpt.get("ema") is None:
            raise LabelfixError(f"{path}: ema: the run was trained without --ema")
        t.ema.module.load_state_dict(ckpt["ema"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.loss_fn.load_state_dict(ckpt.get("loss") or {})
    if t.scaler is not None and ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    t.epoch = int(ckpt["epoch"])
    t.global_step = int(ckpt["global_step"])
    t.sampler.load_state_dict(ckpt["sampler"])
    rng = ckpt["rng"]
    if int(rng["world_size"]) != t.dist.world_size:
        raise LabelfixError(f"{path}: rng: saved with {rng['world_size']} processes, resumed with "
                            f"{t.dist.world_size}; resume with the same number")
    mine = rng["ranks"][t.dist.rank]
    set_rng_state(mine, t.device)
    t.mixer.load_state_dict(mine)
    ts = ckpt.get("train_state") or {}
    t.best_map = float(ts.get("best_map", -math.inf))
    t.skipped = {int(k): int(v) for k, v in (ts.get("skipped") or {}).items()}
    t.metrics_rows = [dict(r) for r in ts.get("metrics", [])]
    t.last_train_info = dict(ts.get("last_train") or t.last_train_info)


def _same(name: str, a, b, base_a: Path | None = None, base_b: Path | None = None) -> bool:
    from labelfix.train.config import CHOICES

    if name in PATH_OPTIONS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    if a != b and a in (None, "auto") and b in (None, "auto") and "auto" in CHOICES.get(name, ()):
        return True   # unset means auto
    return a == b


def recorded_mixing(out: Path) -> dict:
    """The mixing options a run resolved when it started (``dataset.mixing`` in
    ``config.yaml``; empty for no mixing method or a run from before they were recorded)."""
    from labelfix.io.yaml_file import read_yaml

    try:
        doc = read_yaml(Path(out) / "config.yaml") or {}
    except LabelfixError:
        return {}   # read_run_config refuses an unreadable file with its own line
    recorded = (doc.get("dataset") or {}).get("mixing") if isinstance(doc, dict) else None
    if not isinstance(recorded, dict):
        return {}
    if recorded.get("icm_mode") == "single":   # runs before 2026-12-07 recorded a weight single mode has no use for
        recorded = {k: v for k, v in recorded.items() if k != "icm_weight"}
    return recorded


def with_recorded_mixing(cfg, recorded: dict):
    """``cfg`` with its unset / ``auto`` mixing options replaced by the ``recorded`` values
    (:func:`recorded_mixing`), so that a resume continues the run as it was even after a
    default changed (e.g. an older BalanceMix run recorded ``balancemix_refine: batch``
    before the default became ``auto``)."""
    values = cfg.to_dict()
    adopt = {k: v for k, v in recorded.items() if k in values and values[k] in (None, "auto") and v is not None}
    return dataclasses.replace(cfg, **adopt).validate() if adopt else cfg


def check_resume_compatible(saved, given, out: Path):
    """Refuse ``--resume`` with options that change what is computed (one line naming
    them); returns ``given`` with the run's recorded mixing defaults
    (:func:`with_recorded_mixing`), ``--mix auto`` and ``--loss auto`` as the run resolved them
    (``mix``; ``loss``, ``refit_loss``): the options to resume with."""
    for name in ("mix", "loss"):   # a config.yaml written by hand may not say what the run trained
        if getattr(saved, name) == "auto":
            if getattr(given, name) == "auto":
                raise LabelfixError(f"{out / 'config.yaml'}: {name}: auto: the run does not record which "
                                    f"{'mixing method' if name == 'mix' else 'loss'} it trained with; resume with "
                                    f"--{name} naming it")
            saved = dataclasses.replace(saved, **{name: getattr(given, name)})
    if given.mix == "auto":   # the method the run resolved when it started (before its recorded options)
        given = dataclasses.replace(given, mix=saved.mix)
    recorded = recorded_mixing(out)
    saved, given = with_recorded_mixing(saved, recorded), with_recorded_mixing(given, recorded)
    if given.loss == "auto":   # the losses the run resolved when it started (or was given then)
        given = dataclasses.replace(given, loss=saved.loss, refit_loss=given.refit_loss or saved.refit_loss)
    from labelfix.train.config import option_of

    old = saved.to_dict()
    diff = [name for name, value in given.to_dict().items()
            if name not in RESUME_MUTABLE and not _same(name, old.get(name), value)]
    if diff:
        raise LabelfixError(f"{out / 'config.yaml'}: --resume with different option(s) "
                            f"{', '.join(option_of(d) for d in diff)}; "
                            f"resume with the run's options or start a new --out")
    return given


def write_run_files(t) -> None:
    """The run directory's label set, split and ``config.yaml`` (rank 0; the label set
    and split only for a new run)."""
    from labelfix.train.config import write_run_config

    if not t.dist.is_main:
        return
    t.out.mkdir(parents=True, exist_ok=True)
    (t.out / "stats").mkdir(exist_ok=True)
    if not t.cfg.resume:
        t.labelset.save(t.out)
        atomic.write_npy(t.out / "split.npy", t.split)
    extra = {"images": int(t.labelset.num_images), "classes": int(t.labelset.num_classes),
             "train_images": int(t.train_rows.size), "val_images": int(t.val_rows.size),
             "source": str(t.labelset.source.get("path", t.cfg.data)),
             "mixing": t.mixer.settings(), "weights": t.weights_info,
             # options whose default depends on others or on the machine, as this run resolved them
             "resolved": {"prior_bias": t.cfg.uses_prior_bias, "workers": t.cfg.loader_workers}}
    note = write_run_config(t.cfg, t.fingerprint, extra)
    if note:
        t.log(note)
