"""The training loop behind ``labelfix train``.

One ``Trainer`` owns a run directory (layout: docs/internals.md). Per epoch: train (the
run's :class:`~labelfix.train.mixers.Mixer` turns each batch into the loss's inputs),
save ``checkpoints/last.pt`` atomically (``checkpoint.py``), then finish the epoch:
evaluation pass over all N images, validation, metrics, ``best.pt`` and the mixer's
per-epoch hook (``evaluate.py``). ``Trainer(cfg, resume=True)`` continues exactly where
the last checkpoint ended (``checkpoint.py`` says how).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from labelfix.errors import LabelfixError
from labelfix.labels import LabelSet
from labelfix.numeric import sigmoid
from labelfix.train import checkpoint as ckpt_mod
from labelfix.train import evaluate
from labelfix.train.config import TrainConfig, read_run_config
from labelfix.train.data import KeyedDataset, build_datasets, cfg_augments, make_loader, read_validation, run_labels
from labelfix.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, resolve_device
from labelfix.train.metrics import class_groups
from labelfix.train.mixers import Batch, create_mixer
from labelfix.train.optim import (build_amp, build_loss, build_optimizer, build_scheduler, optimizer_step,
                                  resolve_auto)
from labelfix.train.progress import Progress, format_row, to_stderr
from labelfix.train.sampler import EpochBatchSampler, derive_seed


class Trainer:
    """Train one run. ``Trainer(cfg).fit()`` -> summary dict.

    Args:
        cfg: the resolved options (``cfg.validate()`` is called).
        callbacks: objects with optional ``on_step(trainer, epoch, step)`` and
            ``on_epoch_end(trainer, epoch, row)`` methods (tests and integrations).
        log: function taking one line of text (default: the progress console / stderr).
    """

    def __init__(self, cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None,
                 *, labelset: LabelSet | None = None, split: np.ndarray | None = None,
                 features_dir: Path | None = None, keep_process_group: bool = False,
                 image_cache: dict | None = None, role_estimates: np.ndarray | None = None,
                 embed: bool = True, log_prefix: str = "", say_weights: bool = True):
        """``labelset``, ``split`` (int8 (N,): 0 train, 1 validation, 2 held out),
        ``features_dir`` (where ``--frozen``'s embeddings live; default ``out/features``),
        ``image_cache`` (decoded evaluation images by row, shared by the fold models),
        ``role_estimates`` (float (N, K), a refit round's ROLE table start), ``embed`` (False:
        no final ``stats/embeddings.npy``; clean reads the last round's), ``log_prefix``,
        ``say_weights`` (False: the first fold model says it) come from the cross-fitting
        driver (``crossfit.py``), which says the run-wide notes of its fold models once."""
        self.cfg = cfg.validate()
        self.callbacks = list(callbacks or [])
        self._log, self._prefix = log, log_prefix
        self._given = {"labelset": labelset, "split": split}
        self.features_dir = Path(features_dir) if features_dir is not None else Path(cfg.out) / "features"
        self._keep_group = keep_process_group
        self.image_cache = image_cache
        self.role_estimates = role_estimates
        self.embed = embed
        self.say_weights = say_weights
        self.fold_model = labelset is not None   # given by the cross-fitting driver
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.skipped: dict[int, int] = {}   # dataset index -> epoch first seen
        self.skip_reason_cache: dict[int, str] = {}   # dataset index -> why (evaluate.skip_reasons)
        self.metrics_rows: list[dict] = []
        self.last_train_info = {"train_loss": float("nan"), "images": 0, "train_seconds": 0.0}
        self.progress: Progress | None = None

    # ------------------------------------------------------------------ set-up
    def log(self, text: str) -> None:
        if not self.dist.is_main:
            return
        text = self._prefix + text
        if self._log is not None:
            self._log(text)
        elif self.progress is not None:
            self.progress.log(text)
        else:
            to_stderr(text)

    def _prepare_data(self) -> None:
        cfg = self.cfg
        self.labelset, self.split = run_labels(cfg, self.out, **self._given)
        self.labels = np.asarray(self.labelset.labels)
        self.trusted = self.labelset.trusted()   # cells a reviewer verified
        self.train_rows = np.flatnonzero(self.split == 0)
        self.val_rows = np.flatnonzero(self.split == 1)
        if self.train_rows.size == 0:
            raise LabelfixError(f"{cfg.data}: no image left to train on")
        from labelfix.validation import require_known_labels, require_readable_images
        require_known_labels(self.labels, self.train_rows, str(cfg.data))   # nothing to learn: refuse
        require_readable_images(self.labelset, self.train_rows, str(cfg.data))   # zero readable images: refuse
        if not cfg.resume and not self.fold_model:   # crossfit resolves it for its folds
            self.cfg = resolve_auto(cfg, self.labels, self.train_rows, self.labelset.class_names, self.log)
        # a fold model's driver notes a --val overlap once
        self.val_set = read_validation(cfg, self.labelset, None if self.fold_model else self.log) if cfg.val else None
        self.fingerprint = self.labelset.fingerprint()
        self.run_fingerprint = ckpt_mod.run_fingerprint(self.fingerprint, self.split, cfg.seed)

    def _build(self) -> None:
        from labelfix.models import create_model, model_config

        cfg = self.cfg
        ckpt_mod.seed_everything(cfg.seed)
        self.model = create_model(cfg.backbone, cfg.head, num_classes=self.labelset.num_classes,
                                  pretrained=cfg.pretrained, weights=cfg.weights, img_size=cfg.img_size)
        self.model_config = model_config(self.model)
        if cfg.uses_prior_bias and not self.model.head_from_weights:   # Focal loss Sec. 4.1, per class
            from labelfix.losses import trains_unknown
            from labelfix.models.prior import class_prior, init_output_bias

            init_output_bias(self.model.head, class_prior(self.labels, self.train_rows,
                                                          unknown_as_negative=trains_unknown(cfg.loss)))
        report = getattr(self.model, "weights_report", None)
        self.weights_info = None if report is None else report.to_dict()
        if report is not None and self.say_weights:
            self.log(f"weights: {report}")
        self.model.to(self.device)
        # channels_last: default on CUDA; on the CPU only when asked (faster for some
        # models, slower for others, docs/training.md)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.frozen:
            self.model.backbone.requires_grad_(False)
        self.amp_dtype, self.scaler = build_amp(cfg.amp, self.device)
        self.loss_fn = build_loss(cfg, self.labels, self.role_estimates).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.loss_fn)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=True)
        # --frozen: the backbone is fixed (it made the features) and only the head trains
        self.train_model = self.model.head if cfg.frozen else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.train_model,
                                   device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_tf, self.eval_tf, self.train_ds, self.eval_ds, self.val_ds = build_datasets(self)
        self.mixer = create_mixer(cfg.mix, cfg, self)
        self.sampler = EpochBatchSampler(self.train_rows, cfg.batch_size, cfg.seed, self.dist.world_size,
                                         self.dist.rank, minority=self.mixer.minority_batch)
        self.micro_steps = len(self.sampler)
        self.scheduler = build_scheduler(cfg, self.optimizer, math.ceil(self.micro_steps / cfg.accum_steps))
        self.epoch = 0
        self.global_step = 0
        self.best_map = -math.inf
        counts = (self.labels[self.train_rows] == 1).sum(0)
        self.groups = class_groups(counts, self.train_rows.size, cfg.class_groups)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # ------------------------------------------------------------------ what a mixer may use
    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def sum_over_ranks(self, values) -> np.ndarray:
        return all_reduce_sum(values, self.dist)

    @property
    def ema_model(self):
        return None if self.ema is None else self.ema.module

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` (the model or its EMA) on a batch: images, or with
        ``--frozen`` the features (the head alone)."""
        return model.head(x) if self.cfg.frozen else model(x)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The current model in eval mode: float32 (B, K) probabilities on the CPU; (B, V,
        ...) inputs give the mean over the V views."""
        was_training = self.model.training
        self.model.eval()
        try:
            multi = images.dim() == (3 if self.cfg.frozen else 5)
            b, v = images.shape[0], images.shape[1] if multi else 1
            with self.autocast():
                logits = self.forward(self.model, self.to_device(images.flatten(0, 1) if multi else images))
            return torch.sigmoid(logits.float()).view(b, v, -1).mean(1).cpu()
        finally:
            self.model.train(was_training)

    def score_rows(self, model, rows: np.ndarray, views: int = 0) -> np.ndarray:
        """float32 (len(rows), K): logits of ``model`` (None: the current model) on ``rows``,
        or with ``views`` the mean probability over that many training views (``--frozen``:
        the probability of the one feature vector)."""
        model = self.model if model is None else model
        n, k = self.labels.shape
        out = np.full((n, k), np.nan, dtype=np.float32)
        ds = self.eval_ds
        if views and not self.cfg.frozen:   # features have no augmentation: their views are the vector
            ds = KeyedDataset(self.labelset, self.train_tf, views=views, stack_views=True,
                              random=cfg_augments(self.cfg))
        evaluate.score(self, model, ds, np.asarray(rows), out, tag=derive_seed(3, self.epoch))
        if views and self.cfg.frozen:   # one (feature) view: its probability, as promised
            return sigmoid(out[np.asarray(rows)]).astype(np.float32)
        return out[np.asarray(rows)]

    # ------------------------------------------------------------------ main loop
    def embed_only(self) -> None:
        """Embed the images with the finished run's last checkpoint, without training (the
        cross-fitting driver, when its rounds stop before the last: ``cfg.resume`` is set)."""
        self._prepare_data()
        self._build()
        ckpt_mod.load_checkpoint(self)
        from labelfix.train.features import embed_run

        embed_run(self, self.out / "stats", names=("embeddings",))

    def fit(self) -> dict:
        cfg = self.cfg
        try:
            self._prepare_data()
            cfg = self.cfg   # --mix / --loss auto resolved
            if cfg.resume:
                self.cfg = cfg = ckpt_mod.check_resume_compatible(read_run_config(self.out), cfg, self.out)
            self._build()
            if cfg.resume:   # before config.yaml is rewritten: a refused resume changes nothing
                ckpt_mod.load_checkpoint(self)
                if self.epoch > cfg.epochs:
                    raise LabelfixError(f"{self.out}: --epochs {cfg.epochs}, but the run has trained {self.epoch} "
                                        f"epochs; resume with --epochs {self.epoch} or more")
            ckpt_mod.write_run_files(self)
            barrier(self.dist)
            self.progress = Progress(cfg.progress and self.dist.is_main)
            with self.progress:
                saved, finishing = self.epoch, cfg.resume   # the epoch on disk; in its evaluation pass
                try:
                    if cfg.resume:
                        evaluate.resume_finalize(self)
                        if self.epoch == cfg.epochs:
                            self.log(f"{self.out}: all {cfg.epochs} epochs trained; raise --epochs to train longer")
                    finishing = False
                    if self.epoch < cfg.epochs:
                        self.log(f"training {self.train_rows.size} images, {self.labelset.num_classes} classes, "
                                 f"{self.micro_steps} steps/epoch on {self.device}"
                                 + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""))
                    while self.epoch < cfg.epochs:
                        e = self.epoch
                        self.last_train_info = self._train_epoch(e)
                        self.epoch = e + 1
                        ckpt_mod.save_checkpoint(self)
                        saved, finishing = self.epoch, True
                        row = evaluate.finalize_epoch(self, e, self.last_train_info, record_mean=True)
                        finishing = False
                        self.log(format_row(row))
                        self._say_new_skipped(e)
                        for cb in self.callbacks:
                            if hasattr(cb, "on_epoch_end"):
                                cb.on_epoch_end(self, e, row)
                except KeyboardInterrupt:
                    raise ckpt_mod.interrupted(self, saved, finishing) from None
            if self.embed and not cfg.frozen:   # the final model's embedding: clean's neighbour evidence
                from labelfix.train.features import embed_run

                embed_run(self, self.out / "stats", names=("embeddings",))
            if self.skipped and not self.fold_model:   # the driver counts the run's
                reasons = evaluate.skip_reasons(self.labelset, self.skipped, self.skip_reason_cache).values()
                self.log(f"{evaluate.skipped_summary(reasons)}; "
                         f"see {self.out / 'skipped_images.csv'}")
            return {"epochs": self.epoch, "metrics": self.metrics_rows, "skipped": len(self.skipped),
                    "out": str(self.out)}
        finally:
            if not self._keep_group:
                cleanup(self.dist)

    def _say_new_skipped(self, epoch: int) -> None:
        """Name the images first found unreadable in ``epoch`` right after it, not only when
        training ends (a long run's missing files show in its first minutes). A cross-fitted
        run's first fold model speaks for the run (``say_weights``); the driver sums up at
        the end."""
        new = [i for i, first in self.skipped.items() if first == epoch + 1]
        if new and self.say_weights and self.dist.is_main:
            reasons = evaluate.skip_reasons(self.labelset, new, self.skip_reason_cache).values()
            self.log(f"epoch {epoch + 1}: {evaluate.skipped_summary(reasons)}; training goes on without them")

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        if hasattr(self.loss_fn, "set_epoch"):
            self.loss_fn.set_epoch(epoch)
        self.train_ds.views = self.mixer.views(epoch)
        self.train_model.train()
        loader = make_loader(self.train_ds, self.sampler, cfg.loader_workers, pin_memory=self.device.type == "cuda")
        n_micro = self.micro_steps
        task = self.progress.task(f"epoch {epoch + 1}/{cfg.epochs}", n_micro) if self.dist.is_main else None
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, labels, indices, slots, failed, _pos, views) in enumerate(loader):
            for i in failed.tolist():
                self.skipped.setdefault(int(i), epoch + 1)
            group_start = (step // cfg.accum_steps) * cfg.accum_steps
            group_size = min(cfg.accum_steps, n_micro - group_start)
            last_in_group = step == group_start + group_size - 1
            sync = self.train_model.no_sync() if self.dist.enabled and not last_in_group else contextlib.nullcontext()
            with sync:
                if images is None:   # the whole batch failed: a zero loss keeps DDP ranks in step
                    loss, b = sum(p.sum() for p in self.model.parameters()) * 0.0, 0
                else:
                    loss, b = self._compute_loss(Batch(images, labels, indices, slots, views))
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise LabelfixError(
                        f"{self.out}: epoch {epoch + 1} step {step + 1}: the loss is {value}; training stopped. "
                        f"checkpoints/last.pt (epoch {self.epoch}) is the last good state; lower --lr, "
                        f"try --no-amp or another --loss, then start again or --resume")
                scaled = loss / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if last_in_group:
                self.global_step = optimizer_step(self.optimizer, self.scheduler, self.scaler, cfg.clip_grad,
                                                  self.ema, self.model, self.global_step)
            seen += b
            loss_sum += value * b
            elapsed = time.perf_counter() - t0
            self.progress.update(task, advance=1, loss=loss_sum / max(seen, 1),
                                 ips=seen * self.dist.world_size / max(elapsed, 1e-9))
            for cb in self.callbacks:
                if hasattr(cb, "on_step"):
                    cb.on_step(self, epoch, step)
        # every rank's mean training loss, weighted by images
        tot = all_reduce_sum([loss_sum, seen], self.dist)
        return {"train_loss": tot[0] / max(tot[1], 1), "images": int(tot[1]),
                "train_seconds": time.perf_counter() - t0}

    def _compute_loss(self, batch: Batch):
        """Mix, forward, loss: (scalar loss, images in the step)."""
        mixed = self.mixer.mix(batch)
        x = self.to_device(mixed.x)
        with self.autocast():
            logits = self.train_model(x)
        loss = self.mixer.loss(logits.float(), mixed.to(self.device), self.loss_fn)
        return loss, x.shape[0]

