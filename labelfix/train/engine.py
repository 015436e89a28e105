"""The training engine behind ``labelfix train``.

One ``Trainer`` owns a run directory (layout and checkpoint format: docs/internals.md).
Per epoch: train (optionally mixing: mixup / LogicMix / BalanceMix), save
``checkpoints/last.pt`` atomically, then *finalize* the epoch: the evaluation pass over
all N images (``stats.py``), validation mAP, ``metrics.csv``, ``best.pt``, and for
BalanceMix the minority weights, label GMMs and two-view re-labeling for the next
epoch. ``stats/state.json`` marks a finalized epoch as complete.

Resume (``resume=True``) loads ``last.pt`` (weights, optimizer, schedule, EMA, RNG
states, sampler) and re-finalizes its epoch if that was interrupted; every random choice
is either restored from the checkpoint or derived from ``(seed, epoch, position)``, so a
run killed at any point and resumed ends with the same weights as an uninterrupted run
(bit-for-bit on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import LabelSet
from labelfix.train import balancemix as bmx
from labelfix.train import stats as stats_mod
from labelfix.train.config import TrainConfig, read_run_config, run_config_document
from labelfix.train.data import KeyedDataset, MultiViewDataset, make_loader, split_indices
from labelfix.mixing.balancemix import balancemix_lambda, mix_pair
from labelfix.train.distributed import (DistInfo, all_gather_tensor, all_reduce_sum, barrier, broadcast_object,
                                        cleanup, init_distributed)
from labelfix.train.metrics import class_groups, map_report
from labelfix.train.sampler import EpochBatchSampler, ShardSampler, derive_seed


class TrainingInterrupted(LabelfixError):
    """Ctrl-C during training; the message says how to resume."""


# --------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LabelfixError(f"train: --device: {name!r} is not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LabelfixError(f"train: --device: {name}: CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> dict:
    """Global RNG states (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.random.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              warmup_ratio: float = 0.01, min_ratio: float = 0.01) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warm-up from ``warmup_ratio`` to 1 over ``warmup_steps``; then ``cosine``
    (to ``min_ratio`` at the last step), ``onecycle`` (linear decay to ``min_ratio``: a
    triangular one-cycle policy whose rising half is the warm-up) or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps - 1)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return 1.0 - (1.0 - min_ratio) * t
    raise ValueError(schedule)


def build_loss(cfg: TrainConfig, labels: np.ndarray) -> nn.Module:
    """``labelfix.losses.create_loss`` with the dataset-dependent arguments filled in."""
    from labelfix.losses import create_loss, estimate_kappa

    kw = dict(cfg.loss_kwargs or {})
    name = cfg.loss.lower()
    if name in ("epr", "role") and "kappa" not in kw:
        kw["kappa"] = float(estimate_kappa(labels))
    if name == "role":
        kw.setdefault("seed", cfg.seed)
        kw.update(num_samples=int(labels.shape[0]), num_classes=int(labels.shape[1]),
                  given_labels=np.asarray(labels))
    return create_loss(name, **kw)


def build_optimizer(cfg: TrainConfig, model: nn.Module, loss: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases and norm weights (timm convention); the
    loss's label-estimator parameters (ROLE) get 10x the learning rate and no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    est = list(loss.estimator_parameters()) if hasattr(loss, "estimator_parameters") else []
    if est:
        groups.append({"params": est, "weight_decay": 0.0, "lr_scale": 10.0})
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def _split_target(labels: torch.Tensor):
    from labelfix.losses import split_labels

    return split_labels(labels)


class _Progress:
    """A rich progress bar (loss, images/s, ETA) on rank 0, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int):
        if self.bar is None:
            return None
        return self.bar.add_task(description, total=total, loss=float("nan"), ips=0.0)

    def update(self, task, **kw):
        if self.bar is not None and task is not None:
            self.bar.update(task, **kw)

    def log(self, text: str):
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Train one run. ``Trainer(cfg).fit()`` -> summary dict.

    Args:
        cfg: the resolved options (``cfg.validate()`` is called).
        callbacks: objects with optional ``on_step(trainer, epoch, step)`` and
            ``on_epoch_end(trainer, epoch, row)`` methods (tests and integrations).
        log: function taking one line of text (default: the progress console / stderr).
    """

    def __init__(self, cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg.validate()
        self.callbacks = list(callbacks or [])
        self._log = log
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.skipped: dict[int, int] = {}   # dataset index -> epoch first seen
        self.managed: bmx.Management | None = None
        self.metrics_rows: list[dict] = []
        self.last_train_info = {"train_loss": float("nan"), "images": 0, "train_seconds": 0.0}

    # ------------------------------------------------------------------ set-up
    def log(self, text: str) -> None:
        if not self.dist.is_main:
            return
        if self._log is not None:
            self._log(text)
        elif getattr(self, "progress", None) is not None:
            self.progress.log(text)
        else:
            print(text, file=sys.stderr)

    def _prepare_data(self) -> None:
        from labelfix.io import read_labels

        cfg = self.cfg
        last = self.out / "checkpoints" / "last.pt"
        if cfg.resume:
            if not last.exists():
                raise LabelfixError(f"{last}: no checkpoint to resume from (run without --resume first)")
            self.labelset = LabelSet.load(self.out)
            self.split = np.load(self.out / "split.npy")
        else:
            if last.exists():
                raise LabelfixError(f"{self.out}: already holds a run (checkpoints/last.pt); "
                                    f"pass --resume to continue it or choose another --out")
            self.labelset = read_labels(cfg.data, format=cfg.format, images=cfg.images, unlabeled=cfg.unlabeled,
                                        class_descriptions=cfg.class_descriptions)
            self.split = split_indices(self.labelset.num_images, cfg.val_split, cfg.seed)
        self.labels = np.asarray(self.labelset.labels)
        self.train_rows = np.flatnonzero(self.split == 0)
        self.val_rows = np.flatnonzero(self.split == 1)
        if cfg.val:
            self.val_set = self._read_val(cfg.val)
        else:
            self.val_set = None
        self.fingerprint = self.labelset.fingerprint()

    def _read_val(self, path: str) -> LabelSet:
        from labelfix.io import read_labels

        val = read_labels(path, format=self.cfg.format, images=self.cfg.images, unlabeled=self.cfg.unlabeled,
                          class_descriptions=self.cfg.class_descriptions)
        names = self.labelset.class_names
        missing = sorted(set(names) - set(val.class_names))
        extra = sorted(set(val.class_names) - set(names))
        if missing or extra:
            raise LabelfixError(f"{path}: classes: validation classes differ from the training classes "
                                f"(missing {missing[:5]}, extra {extra[:5]})")
        order = [val.class_names.index(n) for n in names]
        return LabelSet(np.ascontiguousarray(np.asarray(val.labels)[:, order]), val.images,
                        self.labelset.classes.copy(), val.image_root, dict(val.source))

    def _build(self) -> None:
        from labelfix.data.transforms import create_transforms
        from labelfix.models import create_model, model_config

        cfg = self.cfg
        seed_everything(cfg.seed)
        k = self.labelset.num_classes
        self.model = create_model(cfg.backbone, cfg.head, num_classes=k, pretrained=cfg.pretrained,
                                  weights=cfg.weights, img_size=cfg.img_size)
        self.model_config = model_config(self.model)
        self.model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, self.labels).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.loss_fn)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=True)
        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # data
        mean, std = self.model_config["mean"], self.model_config["std"]
        interp = self.model_config.get("interpolation", "bilinear")
        train_tf = create_transforms(cfg.img_size, mean, std, train=True, randaugment=cfg.randaugment,
                                     hflip=cfg.hflip, interpolation=interp)
        eval_tf = create_transforms(cfg.img_size, mean, std, train=False, interpolation=interp)
        self.train_ds = KeyedDataset(self.labelset, train_tf)
        self.eval_ds = KeyedDataset(self.labelset, eval_tf)
        # BalanceMix's two re-labeling views use the run's own training augmentation: views
        # from an augmentation the model never saw (e.g. RandAugment on a run trained
        # without it) give inflated, uncalibrated probabilities (docs/losses_and_mixing.md)
        self.view_ds = MultiViewDataset(self.labelset, train_tf)
        self.val_ds = KeyedDataset(self.val_set, eval_tf) if self.val_set is not None else None
        self.sampler = EpochBatchSampler(self.train_rows, cfg.batch_size, cfg.seed, self.dist.world_size,
                                         self.dist.rank, minority=cfg.mix == "balancemix")
        self.micro_steps = len(self.sampler)
        self.opt_steps_per_epoch = math.ceil(self.micro_steps / cfg.accum_steps)
        total = self.opt_steps_per_epoch * cfg.epochs
        warm = int(round(cfg.warmup_epochs * self.opt_steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, total, warm, cfg.schedule, cfg.warmup_lr_ratio, cfg.min_lr_ratio))
        # per-rank generator for mixup / LogicMix choices; BalanceMix's l is drawn for the
        # whole global batch from a generator shared by all ranks (each takes its slice),
        # so W processes mix exactly like one process with the same global batch
        self.mix_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 0xB1E5 + self.dist.rank))
        self.pair_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 0xBA1A))
        self.epoch = 0
        self.global_step = 0
        self.best_map = -math.inf
        # AMP: default on for CUDA (bf16 where supported, else fp16 + GradScaler), off on CPU
        use_amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        self.amp_dtype = None
        if use_amp:
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                self.amp_dtype = torch.float16
            else:
                self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        counts = (self.labels[self.train_rows] == 1).sum(0)
        self.groups = class_groups(counts, self.train_rows.size, cfg.class_groups)
        self.delta = cfg.balancemix_delta
        if cfg.mix == "balancemix" and self.delta is None:
            from labelfix.cleaning.states import default_delta

            self.delta = float(default_delta(self.labels[self.train_rows]))

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # ------------------------------------------------------------------ run dir
    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "stats").mkdir(exist_ok=True)
        if not self.cfg.resume:
            self.labelset.save(self.out)
            atomic.write_npy(self.out / "split.npy", self.split)
        extra = {"images": int(self.labelset.num_images), "classes": int(self.labelset.num_classes),
                 "train_images": int(self.train_rows.size), "val_images": int(self.val_rows.size),
                 "source": str(self.labelset.source.get("path", self.cfg.data))}
        atomic.write_text(self.out / "config.yaml", run_config_document(self.cfg, self.fingerprint, extra))

    @property
    def run_fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.fingerprint.encode())
        h.update(self.split.tobytes())
        h.update(str(self.cfg.seed).encode())
        return h.hexdigest()

    def _checkpoint(self) -> dict:
        rng = get_rng_state(self.device)
        rng["mix_generator"] = self.mix_gen.get_state()
        rng["pair_generator"] = self.pair_gen.get_state()
        if self.dist.enabled:
            import torch.distributed as dist

            states = [None] * self.dist.world_size
            dist.all_gather_object(states, rng)
            rng = {"world_size": self.dist.world_size, "ranks": states}
        else:
            rng = {"world_size": 1, "ranks": [rng]}
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": rng,
            "sampler": self.sampler.state_dict(),
            "model_config": self.model_config,
            "classes": self.labelset.class_names,
            "run_fingerprint": self.run_fingerprint,
            # additions to the documented keys: state that exact resume needs
            "loss": self.loss_fn.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "train_state": {"best_map": float(self.best_map), "skipped": dict(self.skipped),
                            "metrics": [_native(r) for r in self.metrics_rows],
                            "last_train": _native(self.last_train_info)},
        }

    def _save_checkpoint(self) -> None:
        ckpt = self._checkpoint()   # collective in DDP: every rank builds it
        if self.dist.is_main:
            with atomic.atomic_path(self.out / "checkpoints" / "last.pt") as tmp:
                torch.save(ckpt, tmp)
        barrier(self.dist)

    def _load_checkpoint(self) -> None:
        path = self.out / "checkpoints" / "last.pt"
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise LabelfixError(f"{path}: cannot read the checkpoint: {str(err).splitlines()[0]}") from None
        if ckpt.get("run_fingerprint") != self.run_fingerprint:
            raise LabelfixError(f"{path}: run_fingerprint: the checkpoint belongs to other data, split or seed")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise LabelfixError(f"{path}: ema: the run was trained without --ema")
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.loss_fn.load_state_dict(ckpt.get("loss") or {})
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.sampler.load_state_dict(ckpt["sampler"])
        rng = ckpt["rng"]
        if int(rng["world_size"]) != self.dist.world_size:
            raise LabelfixError(f"{path}: rng: saved with {rng['world_size']} processes, resumed with "
                                f"{self.dist.world_size}; resume with the same number")
        mine = rng["ranks"][self.dist.rank]
        set_rng_state(mine, self.device)
        self.mix_gen.set_state(mine["mix_generator"])
        self.pair_gen.set_state(mine["pair_generator"])
        ts = ckpt.get("train_state") or {}
        self.best_map = float(ts.get("best_map", -math.inf))
        self.skipped = {int(k): int(v) for k, v in (ts.get("skipped") or {}).items()}
        self.metrics_rows = [dict(r) for r in ts.get("metrics", [])]
        self.last_train_info = dict(ts.get("last_train") or self.last_train_info)

    # ------------------------------------------------------------------ training
    def _batch_targets(self, labels: torch.Tensor, indices: torch.Tensor):
        """(target float, known bool, weight float or None) for a batch, from the given
        labels or, after BalanceMix's warm-up, from the managed labels."""
        if self.managed is None:
            target, known = _split_target(labels)
            return target, known, None
        idx = indices.numpy()
        managed = torch.from_numpy(self.managed.target[idx])
        target, known = _split_target(managed)
        weight = torch.from_numpy(self.managed.weight[idx])
        return target, known, weight

    def _compute_loss(self, images, labels, indices, slots):
        """Mix as configured, forward, loss. Returns the scalar loss (or None to skip)."""
        cfg = self.cfg
        weight = None
        if cfg.mix == "balancemix":
            r = slots == 0
            m = slots == 1
            pos_r, pos_m = torch.nonzero(r).flatten(), torch.nonzero(m).flatten()
            n = min(pos_r.numel(), pos_m.numel())   # pairs whose members both decoded
            pos_r, pos_m = pos_r[:n], pos_m[:n]
            t_r, k_r, w_r = self._batch_targets(labels[pos_r], indices[pos_r])
            t_m, k_m, _ = self._batch_targets(labels[pos_m], indices[pos_m])
            b = self.cfg.batch_size
            lam_all = balancemix_lambda(b * self.dist.world_size, self.pair_gen)
            lam = lam_all[self.dist.rank * b + torch.arange(n)]
            x, target = mix_pair(images[pos_r], images[pos_m], t_r, t_m, lam, known_m=k_m)
            known = k_r
            weight = w_r
            index = indices[pos_r]
        else:
            x = images
            index = indices
            if cfg.mix == "logicmix":
                from labelfix.mixing.logicmix import logicmix

                x, lab = logicmix(x, labels, cfg.mix_prob, generator=self.mix_gen)
                target, known = _split_target(lab)
            else:
                target, known, weight = self._batch_targets(labels, indices)
                if cfg.mix == "mixup":
                    from labelfix.mixing.mixup import mixup

                    if float(torch.rand(1, generator=self.mix_gen)) < cfg.mix_prob:
                        x, target, known = mixup(x, target, known, cfg.mixup_alpha, self.mix_gen)
        x = self._to_device(x)
        dev = self.device
        with self.autocast():
            logits = self.train_model(x)
        logits = logits.float()
        loss = self.loss_fn(logits, target.to(dev), known.to(dev),
                            None if weight is None else weight.to(dev), index.to(dev))
        return loss, x.shape[0]

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        if hasattr(self.loss_fn, "set_epoch"):
            self.loss_fn.set_epoch(epoch)
        self.train_model.train()
        loader = make_loader(self.train_ds, self.sampler, cfg.workers, pin_memory=self.device.type == "cuda")
        n_micro = self.micro_steps
        task = self.progress.task(f"epoch {epoch + 1}/{cfg.epochs}", n_micro) if self.dist.is_main else None
        t0 = time.perf_counter()
        seen, loss_sum, loss_count = 0, 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, labels, indices, slots, failed, _pos) in enumerate(loader):
            for i in failed.tolist():
                self.skipped.setdefault(int(i), epoch + 1)
            group_start = (step // cfg.accum_steps) * cfg.accum_steps
            group_size = min(cfg.accum_steps, n_micro - group_start)
            last_in_group = step == group_start + group_size - 1
            sync = contextlib.nullcontext()
            if self.dist.enabled and not last_in_group:
                sync = self.train_model.no_sync()
            with sync:
                if images is None:
                    loss, b = self._empty_loss(), 0
                else:
                    loss, b = self._compute_loss(images, labels, indices, slots)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise LabelfixError(
                        f"{self.out}: epoch {epoch + 1} step {step + 1}: the loss is {value}; training stopped. "
                        f"checkpoints/last.pt (epoch {self.epoch}) is the last good state; lower --lr, "
                        f"try --no-amp or another --loss, then start again or --resume")
                if self.scaler is not None:
                    self.scaler.scale(loss / group_size).backward()
                else:
                    (loss / group_size).backward()
            if last_in_group:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], cfg.clip_grad)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.global_step)
            seen += b
            loss_sum += value * b
            loss_count += b
            elapsed = time.perf_counter() - t0
            self.progress.update(task, advance=1, loss=loss_sum / max(loss_count, 1),
                                 ips=seen * self.dist.world_size / max(elapsed, 1e-9))
            for cb in self.callbacks:
                if hasattr(cb, "on_step"):
                    cb.on_step(self, epoch, step)
        # every rank's mean training loss, weighted by images
        tot = all_reduce_sum([loss_sum, loss_count, seen], self.dist)
        return {"train_loss": tot[0] / max(tot[1], 1), "images": int(tot[2]),
                "train_seconds": time.perf_counter() - t0}

    def _empty_loss(self):
        """A zero loss touching every parameter (keeps DDP ranks in step when a whole
        batch failed to decode)."""
        return sum(p.sum() for p in self.model.parameters()) * 0.0

    # ------------------------------------------------------------------ evaluation
    def _gather(self, logits, indices, valid):
        if not self.dist.enabled:
            return logits, indices, valid
        k = logits.shape[1] if logits.dim() == 2 else self.labelset.num_classes
        b = self.cfg.batch_size
        pad = b - logits.shape[0]
        logits = torch.cat([logits.to(self.device), torch.zeros(pad, k, device=self.device)])
        indices = torch.cat([indices.to(self.device), torch.zeros(pad, dtype=torch.long, device=self.device)])
        valid = torch.cat([valid.to(self.device), torch.zeros(pad, dtype=torch.bool, device=self.device)])
        return (all_gather_tensor(logits, self.dist), all_gather_tensor(indices, self.dist),
                all_gather_tensor(valid, self.dist))

    def _score(self, model: nn.Module, dataset, rows: np.ndarray, out: np.ndarray, tag: int,
               transform_out=None) -> list[int]:
        """Score ``rows`` of ``dataset`` with ``model`` into ``out`` (all ranks get all rows)."""
        sampler = ShardSampler(rows, self.cfg.batch_size, self.dist.world_size, self.dist.rank,
                               seed=self.cfg.seed, tag=tag)
        loader = make_loader(dataset, sampler, self.cfg.workers, pin_memory=self.device.type == "cuda")
        model.eval()

        def forward(images):
            if images.dim() == 5:   # (B, V, 3, H, W): mean probability over the V views
                b, v = images.shape[:2]
                with self.autocast():
                    logits = model(self._to_device(images.flatten(0, 1)))
                return torch.sigmoid(logits.float().view(b, v, -1)).mean(1)
            with self.autocast():
                return model(self._to_device(images))

        def batches():
            for step, (images, _labels, indices, _slots, failed, positions) in enumerate(loader):
                n_valid = sampler.valid_count(step)[self.dist.rank]
                valid = positions < n_valid
                failed_list = failed  # padded duplicates of a failed image are harmless
                yield images, indices, failed_list, valid

        failed = stats_mod.score_batches(batches(), forward, out, gather=self._gather if self.dist.enabled else None,
                                         transform_out=transform_out)
        if self.dist.enabled:
            everyone = [None] * self.dist.world_size
            import torch.distributed as dist

            dist.all_gather_object(everyone, failed)
            failed = sorted({i for part in everyone for i in part})
            for i in failed:
                out[i] = np.nan
        return failed

    def _finalize_epoch(self, epoch: int, train_info: dict, record_mean: bool) -> dict:
        """Evaluation pass, statistics, metrics row, best.pt, BalanceMix management."""
        cfg = self.cfg
        n, k = self.labels.shape
        stats_dir = self.out / "stats"
        t0 = time.perf_counter()
        state = stats_mod.read_state(stats_dir) if self.dist.is_main else None
        state = broadcast_object(state, self.dist)
        logits_path = stats_dir / "logits.npy" if self.dist.is_main else None
        with stats_mod.array_sink(logits_path, (n, k), np.float16) as logits:
            failed = self._score(self.model, self.eval_ds, np.arange(n), logits, tag=1)
            if not self.dist.is_main:
                self._logits_mem = logits
        for i in failed:
            self.skipped.setdefault(int(i), epoch + 1)
        if self.dist.enabled:   # every rank only saw its own training failures
            import torch.distributed as dist

            parts = [None] * self.dist.world_size
            dist.all_gather_object(parts, self.skipped)
            merged: dict[int, int] = {}
            for part in parts:
                for i, ep in part.items():
                    merged[int(i)] = min(int(ep), merged.get(int(i), int(ep)))
            self.skipped = merged
        logits = np.load(stats_dir / "logits.npy", mmap_mode="r") if self.dist.is_main else self._logits_mem
        record = record_mean and epoch > int(state["last_epoch"])
        recorded = int(state["epochs_recorded"]) + (1 if record else 0)
        if self.dist.is_main:
            if record:
                stats_mod.update_loss_mean(stats_dir, logits, self.labels, recorded - 1)
            stats_mod.write_state(stats_dir, recorded, epoch, complete=False)
            if hasattr(self.loss_fn, "estimates"):
                est = self.loss_fn.estimates().cpu().numpy()
                est = np.clip(est.astype(np.float64), 1e-7, 1 - 1e-7)
                atomic.write_npy(stats_dir / "role_logits.npy", (np.log(est) - np.log1p(-est)).astype(np.float16))
        stats_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": train_info["train_loss"],
               "stats_loss": stats_mod.known_mean_loss(logits, self.labels, self.train_rows)}
        row.update(self._validation(logits))
        t1 = time.perf_counter()
        bm = self._balancemix_update(epoch, logits, fresh=True) if cfg.mix == "balancemix" else {}
        row.update(bm)
        row.update({"lr": float(self.optimizer.param_groups[0]["lr"]),
                    "seconds": train_info["train_seconds"] + (time.perf_counter() - t0),
                    "train_seconds": train_info["train_seconds"], "stats_seconds": stats_seconds,
                    "balancemix_seconds": time.perf_counter() - t1 if bm else 0.0,
                    "images_per_s": train_info["images"] / max(train_info["train_seconds"], 1e-9),
                    "skipped_images": len(self.skipped)})
        self.metrics_rows = [r for r in self.metrics_rows if r["epoch"] < epoch + 1] + [row]
        score = row.get("val_map_ema", row.get("val_map", float("nan")))
        if self.dist.is_main:
            atomic.write_csv(self.out / "metrics.csv", pd.DataFrame(self.metrics_rows))
            self._write_skipped()
            improved = (not math.isnan(score) and score > self.best_map) or math.isnan(score)
            if improved:
                # without validation data best.pt is the latest checkpoint (documented)
                with atomic.atomic_path(self.out / "checkpoints" / "best.pt") as tmp:
                    shutil.copyfile(self.out / "checkpoints" / "last.pt", tmp)
            stats_mod.write_state(stats_dir, recorded, epoch, complete=True)
        if not math.isnan(score):
            self.best_map = max(self.best_map, score)
        barrier(self.dist)
        return row

    def _validation(self, logits) -> dict:
        """Validation mAP (overall and per class group) from the evaluation pass (held-out
        split) or a pass over ``--val``; with EMA also the EMA model's mAP."""
        out = {}
        if self.val_set is not None:
            n, k = self.val_set.labels.shape
            for name, model in self._eval_models():
                scores = np.empty((n, k), dtype=np.float32)
                self._score(model, self.val_ds, np.arange(n), scores, tag=2)
                rep = map_report(np.nan_to_num(scores, nan=0.0), np.asarray(self.val_set.labels), self.groups)
                out.update({f"val_{key}{name}": v for key, v in rep.items()})
        elif self.val_rows.size:
            labels = self.labels[self.val_rows]
            for name, model in self._eval_models():
                if model is self.model:
                    scores = np.asarray(logits[self.val_rows], dtype=np.float32)
                else:
                    full = np.empty(self.labels.shape, dtype=np.float32)
                    self._score(model, self.eval_ds, self.val_rows, full, tag=1)
                    scores = full[self.val_rows]
                rep = map_report(np.nan_to_num(scores, nan=0.0), labels, self.groups)
                out.update({f"val_{key}{name}": v for key, v in rep.items()})
        return out

    def _eval_models(self):
        yield "", self.model
        if self.ema is not None:
            yield "_ema", self.ema.module

    def _balancemix_update(self, epoch: int, logits, fresh: bool) -> dict:
        """Minority weights every epoch; after the warm-up, GMMs + two-view re-labeling.
        ``fresh``: run the two-view pass (else read ``stats/two_view.npy``)."""
        cfg = self.cfg
        weights, spread = bmx.minority_weights(logits, self.labels, self.train_rows)
        self.sampler.set_minority_weights(weights)
        info = {"minority_min_max_ratio": spread["min_max_ratio"]}
        if epoch + 1 < cfg.balancemix_warmup:
            self.managed = None
            return info
        given_rows = self.labels[self.train_rows]
        losses = bmx.train_losses(logits, self.labels, self.train_rows)
        p_clean = bmx.clean_probability(losses, given_rows)
        todo = bmx.images_to_rescore(p_clean, given_rows, cfg.balancemix_clean_threshold)
        n, k = self.labels.shape
        path = self.out / "stats" / "two_view.npy"
        if fresh:
            rows = self.train_rows[todo]
            # both RandAugment views of an image come from one decode, in one forward
            c = np.full((n, k), np.nan, dtype=np.float32)
            if rows.size:
                self._score(self.model, self.view_ds, rows, c, tag=derive_seed(3, epoch))
            nonclean = np.zeros((n, k), dtype=bool)
            nonclean[self.train_rows] = (given_rows >= 0) & (np.nan_to_num(p_clean, nan=1.0)
                                                             <= cfg.balancemix_clean_threshold)
            two_view = np.where(nonclean, c, np.nan).astype(np.float16)
            if self.dist.is_main:
                atomic.write_npy(path, two_view)
        else:
            two_view = np.load(path) if self.dist.is_main else None
            two_view = broadcast_object(two_view, self.dist)
        self.managed = bmx.manage(self.labels, self.train_rows, p_clean,
                                  np.asarray(two_view[self.train_rows], dtype=np.float32),
                                  cfg.balancemix_clean_threshold, self.delta)
        info.update({f"cells_{key}": v for key, v in self.managed.counts.items()})
        info["rescored_images"] = int(todo.size)
        return info

    def _write_skipped(self) -> None:
        if not self.skipped:
            return
        idx = sorted(self.skipped)
        frame = pd.DataFrame({
            "index": idx,
            "image_id": [int(self.labelset.images.at[i, "image_id"]) for i in idx],
            "file_name": [str(self.labelset.images.at[i, "file_name"]) for i in idx],
            "first_epoch": [self.skipped[i] for i in idx],
        })
        atomic.write_csv(self.out / "skipped_images.csv", frame)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> dict:
        cfg = self.cfg
        try:
            self._prepare_data()
            if cfg.resume:
                saved = read_run_config(self.out)
                _check_resume_compatible(saved, cfg, self.out)
            self._build()
            self._write_run_files()
            barrier(self.dist)
            self.progress = _Progress(cfg.progress and self.dist.is_main)
            with self.progress:
                if cfg.resume:
                    self._load_checkpoint()
                    self._resume_finalize()
                self.log(f"training {self.train_rows.size} images, {self.labelset.num_classes} classes, "
                         f"{self.micro_steps} steps/epoch on {self.device}"
                         + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""))
                try:
                    while self.epoch < cfg.epochs:
                        e = self.epoch
                        info = self._train_epoch(e)
                        self.last_train_info = info
                        self.epoch = e + 1
                        self._save_checkpoint()
                        row = self._finalize_epoch(e, info, record_mean=True)
                        self.log(_format_row(row))
                        for cb in self.callbacks:
                            if hasattr(cb, "on_epoch_end"):
                                cb.on_epoch_end(self, e, row)
                except KeyboardInterrupt:
                    if self.epoch == 0:
                        raise TrainingInterrupted(f"{self.out}: interrupted during epoch 1, before any checkpoint; "
                                                  f"start again with a new --out (or delete this one)") from None
                    raise TrainingInterrupted(
                        f"{self.out}: interrupted during epoch {self.epoch + 1}; checkpoints/last.pt holds "
                        f"epoch {self.epoch}. Continue with: labelfix train {cfg.data} --out {cfg.out} --resume"
                    ) from None
            if self.skipped:
                self.log(f"{len(self.skipped)} image(s) failed to decode and were skipped; "
                         f"see {self.out / 'skipped_images.csv'}")
            return {"epochs": self.epoch, "metrics": self.metrics_rows, "skipped": len(self.skipped),
                    "out": str(self.out)}
        finally:
            cleanup(self.dist)

    def _resume_finalize(self) -> None:
        """Bring the statistics and BalanceMix state to the checkpoint's epoch: redo the
        end-of-epoch work if it was interrupted, else rebuild the in-memory state."""
        if self.epoch == 0:
            return
        e = self.epoch - 1
        state = stats_mod.read_state(self.out / "stats") if self.dist.is_main else None
        disk_rows = self.metrics_rows_from_disk() if self.dist.is_main else None
        state, disk_rows = broadcast_object((state, disk_rows), self.dist)
        done = (int(state["last_epoch"]) == e and bool(state.get("complete"))
                and any(int(r["epoch"]) == e + 1 for r in disk_rows))
        if not done:
            self._finalize_epoch(e, self.last_train_info, record_mean=True)
            return
        self.metrics_rows = [_native(r) for r in disk_rows if int(r["epoch"]) <= e + 1]
        scores = [r.get("val_map_ema", r.get("val_map", float("nan"))) for r in self.metrics_rows]
        scores = [float(v) for v in scores if v is not None and not math.isnan(float(v))]
        self.best_map = max(scores) if scores else -math.inf
        if self.dist.is_main and (self.out / "skipped_images.csv").exists():
            frame = pd.read_csv(self.out / "skipped_images.csv")
            self.skipped = {int(i): int(f) for i, f in zip(frame["index"], frame["first_epoch"])}
        self.skipped = broadcast_object(self.skipped, self.dist)
        if self.cfg.mix == "balancemix":
            logits = np.load(self.out / "stats" / "logits.npy") if self.dist.is_main else None
            logits = broadcast_object(logits, self.dist)
            self._balancemix_update(e, logits, fresh=False)

    def metrics_rows_from_disk(self) -> list[dict]:
        path = self.out / "metrics.csv"
        if not path.exists():
            return []
        return pd.read_csv(path).to_dict("records")


def _native(row: dict) -> dict:
    """A metrics row with plain Python values (checkpoints load with weights_only)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, (np.integer,)):
            value = int(value)
        elif isinstance(value, (np.floating,)):
            value = float(value)
        out[str(key)] = value
    return out


# options that may change on --resume (they do not change what is computed, or extend it)
RESUME_MUTABLE = {"epochs", "workers", "device", "progress", "resume"}
PATH_OPTIONS = {"data", "out", "images", "val", "weights", "class_descriptions"}


def _same(name: str, a, b) -> bool:
    if name in PATH_OPTIONS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def _check_resume_compatible(saved: TrainConfig, given: TrainConfig, out: Path) -> None:
    old = saved.to_dict()
    diff = [name for name, value in given.to_dict().items()
            if name not in RESUME_MUTABLE and not _same(name, old.get(name), value)]
    if diff:
        raise LabelfixError(f"{out / 'config.yaml'}: --resume with different option(s) "
                            f"{', '.join('--' + d.replace('_', '-') for d in diff)}; "
                            f"resume with the run's options or start a new --out")


def _format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_map", "val_map_ema"):
        if key in row and not math.isnan(row[key]):
            parts.append(f"{key} {row[key]:.2f}")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def train(cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train as configured; returns ``{"epochs", "metrics", "skipped", "out"}``."""
    return Trainer(cfg, callbacks=callbacks, log=log).fit()
