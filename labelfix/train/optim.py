"""Optimizer, learning-rate schedule and loss of a run, built from its ``TrainConfig``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from labelfix.errors import LabelfixError


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


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """``LambdaLR`` over ``cfg.epochs * steps_per_epoch`` optimizer steps (:func:`lr_factor`)."""
    total = steps_per_epoch * cfg.epochs
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warm, cfg.schedule, cfg.warmup_lr_ratio, cfg.min_lr_ratio))


def build_loss(cfg, labels: np.ndarray) -> nn.Module:
    """``labelfix.losses.create_loss`` with the dataset-dependent arguments filled in
    (EPR / ROLE: kappa estimated from ``labels`` unless given; ROLE: its label table)."""
    from labelfix.losses import create_loss, estimate_kappa

    kw = dict(cfg.loss_kwargs or {})
    name = cfg.loss.lower()
    if name in ("epr", "role") and "kappa" not in kw:
        kw["kappa"] = float(estimate_kappa(labels))
    if name == "role":
        kw.setdefault("seed", cfg.seed)
        kw.update(num_samples=int(labels.shape[0]), num_classes=int(labels.shape[1]),
                  given_labels=np.asarray(labels))
    try:
        return create_loss(name, **kw)
    except LabelfixError as err:
        if not cfg.loss_kwargs:
            raise
        raise LabelfixError(f"--loss-kwargs: {err}") from None   # name the option the value came from


def build_optimizer(cfg, model: nn.Module, loss: nn.Module) -> torch.optim.Optimizer:
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


def build_amp(amp: bool | None, device: torch.device):
    """Mixed precision of a run: ``(autocast dtype or None, GradScaler or None)``.

    ``amp`` None means the default: on for CUDA (bfloat16 where the GPU supports it,
    else float16 with a ``GradScaler``), off on the CPU.
    """
    use_amp = amp if amp is not None else device.type == "cuda"
    if not use_amp:
        return None, None
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return (torch.float16, torch.amp.GradScaler("cuda")) if fp16 else (torch.bfloat16, None)


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, scaler, clip_grad: float | None,
                   ema, model: nn.Module, global_step: int) -> int:
    """One optimizer step after the accumulated backward passes: unscale (fp16), clip
    the gradient norm to ``clip_grad``, step, zero the gradients, advance the schedule
    and the EMA (timm ``ModelEmaV3``, warm-up by step). Returns the new global step."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    global_step += 1
    if ema is not None:
        ema.update(model, step=global_step)
    return global_step
