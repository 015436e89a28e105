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


#: ``--loss auto`` on positive-only labels, by the backbone's start: the assume-negative
#: losses of Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021,
#: Sec. 3.2, which need no expected-positive count (ROLE and EPR do) and work with every
#: mixing method. From random weights AN with label smoothing ranked the missing positives
#: better (demo data, +0.04 / +0.05), from ImageNet weights fine-tuned plain AN did (+0.05
#: to +0.08); docs/training.md, "Choosing the loss"
AUTO_POSITIVE_ONLY_LOSS = {"random": "an-ls", "pretrained": "an"}
#: ``--loss auto``'s loss for cross-fitting rounds 2 and later on positive-only labels:
#: ROLE (Cole et al. 2021, Sec. 3.3), with kappa estimated from round 1's held-out model
#: (``labelfix.losses.kappa_from_held_out``), which single-positive labels cannot give;
#: docs/training.md, "Choosing the loss"
AUTO_REFIT_LOSS = "role"


#: ``--mix auto``'s method where it was measured to help detection: fine-tuning pretrained
#: weights on labels without unknown cells (LogicMix, Chong et al. 2024: the held-out
#: models rank wrong labels better). Elsewhere auto trains without mixing: with unknown cells
#: the LogicMix folds ranked the missing positives lower, and from random weights LogicMix
#: lowered clean-test mAP under missing 50 % (-12.8, 0 of 4) and AN-LS's ranking of
#: single-positive labels; docs/training.md, "Choosing the mixing method"
AUTO_MIX = "logicmix"


def resolve_mix(cfg, labels, rows, log=lambda line: None, counts=None):
    """``cfg`` with ``--mix auto`` resolved (any other ``mix`` is returned as given):
    :data:`AUTO_MIX` when the backbone starts from pretrained weights and fine-tunes
    (``--pretrained`` or ``--weights``, not ``--frozen``), every training cell (``rows`` of
    int8 (N, K) ``labels``) is known, and the loss can be mixed (not ROLE, whose label table
    has one row per image); else ``"none"``. A pick other than ``"none"`` is named in one
    line to ``log``. ``counts``: :func:`labelfix.labels.count_known` of those rows, when
    the caller has them."""
    import dataclasses

    from labelfix.labels import count_known

    if cfg.mix != "auto":
        return cfg
    fine_tunes = bool(cfg.pretrained or cfg.weights) and not cfg.frozen
    if fine_tunes and cfg.loss != "role":
        pos, neg = counts if counts is not None else count_known(labels, rows)
        if int(pos.sum() + neg.sum()) == len(rows) * labels.shape[1]:
            log(f"mixing: {AUTO_MIX} (--mix auto: fine-tuning pretrained weights on labels without unknown cells)")
            return dataclasses.replace(cfg, mix=AUTO_MIX)
    return dataclasses.replace(cfg, mix="none")   # the usual case needs no line


def resolve_auto(cfg, labels, rows, class_names=None, log=lambda line: None):
    """``cfg`` with ``--mix auto`` (:func:`resolve_mix`) and then ``--loss auto``
    (:func:`resolve_loss`, whose rule depends on the method) resolved, from one count of
    the training labels; what ``labelfix train`` calls once per run (a cross-fitted run:
    once, for every fold model)."""
    from labelfix.labels import count_known

    counts = count_known(labels, rows)
    return resolve_loss(resolve_mix(cfg, labels, rows, log, counts), labels, rows, class_names, log, counts)


def resolve_loss(cfg, labels, rows, class_names=None, log=lambda line: None, counts=None):
    """``cfg`` (its ``mix`` resolved) with ``--loss auto`` resolved from the training labels (``rows`` of
    ``labels``); says what it chose on positive-only labels, and warns, in one line
    each to ``log`` (``class_names`` name the classes there).

    auto: ``an-ls`` from random weights, ``an`` from pretrained ones (``--pretrained``,
    ``--weights``; :data:`AUTO_POSITIVE_ONLY_LOSS`) when the labels are positive-only
    (:func:`labelfix.labels.positive_only`) and the mixing method does not itself train
    missing labels as negatives (BalanceMix does, ``Mixer.assumes_unknown_negative``);
    else masked ``bce``. A cross-fitted run (``--folds``, 2 or more rounds) with that
    first loss also gets ``refit_loss = "role"`` (:data:`AUTO_REFIT_LOSS`) unless one is
    given: rounds 2 and later train ROLE with kappa from round 1's held-out model.
    A loss that gives unknown cells no target (masked BCE, ASL) cannot learn a class
    without a known negative: it would call every image positive; each such class is
    named in a note (no refusal: the benchmarks train masked BCE on single-positive labels
    on purpose, as the baseline). ``counts``: :func:`labelfix.labels.count_known` of those
    rows, when the caller has them."""
    import dataclasses

    from labelfix.labels import count_known, positive_only_counts
    from labelfix.losses import trains_unknown
    from labelfix.train.config import EXPECTED_POSITIVE_LOSSES
    from labelfix.train.mixers import mixer_class

    mixer = mixer_class(cfg.mix)
    pos, neg = counts if counts is not None else count_known(labels, rows)   # one pass for the rule and the warning
    if cfg.loss == "auto":
        only = positive_only_counts(pos, neg, len(rows) * labels.shape[1])
        start = "pretrained" if cfg.pretrained or cfg.weights else "random"
        loss = AUTO_POSITIVE_ONLY_LOSS[start] if only and not mixer.assumes_unknown_negative else "bce"
        refit = cfg.refit_loss
        if loss != "bce" and refit is None and cfg.folds and (cfg.rounds or 2) >= 2:
            refit = AUTO_REFIT_LOSS
        if only:   # the usual case (bce) needs no line
            log(f"loss: {loss} (--loss auto: the training labels are positive-only, most cells unknown and fewer "
                f"known negatives than positives" + (f"; --mix {cfg.mix} trains missing labels as negatives)"
                                                     if loss == "bce" else ")")
                + (f"; cross-fitting rounds 2+ train {refit}, with kappa estimated from round 1's held-out model"
                   if refit and refit != cfg.refit_loss else ""))
        cfg = dataclasses.replace(cfg, loss=loss, refit_loss=refit)
    from labelfix.train.config import UNKNOWN_ONLY_LOSSES

    later_rounds = cfg.folds and (cfg.rounds or 2) >= 2   # they train round 1's suspicious cells as unknown
    if cfg.loss in UNKNOWN_ONLY_LOSSES and int(pos.sum() + neg.sum()) == len(rows) * labels.shape[1] \
            and not later_rounds:
        raise LabelfixError(f"train: --loss {cfg.loss}: only changes how unknown cells train, and the training labels "
                            f"have none (every cell is known), so it would train exactly like --loss bce; use --loss "
                            f"bce")
    empty = np.flatnonzero(neg == 0)
    if empty.size and not (trains_unknown(cfg.loss) or mixer.trains_unknown(cfg) or cfg.loss in EXPECTED_POSITIVE_LOSSES):
        first = repr(str(class_names[empty[0]])) if class_names is not None else f"column {int(empty[0])}"
        log(f"note: {empty.size} of {neg.size} classes have no known negative in the training images (first: "
            f"{first}); --loss {cfg.loss} gives unknown cells no target, so the model learns to call those classes "
            f"positive everywhere; use --loss an-ls or --loss auto, or give negatives")
    return cfg


def build_loss(cfg, labels: np.ndarray, role_estimates: np.ndarray | None = None) -> nn.Module:
    """``labelfix.losses.create_loss`` with the dataset-dependent arguments filled in
    (EPR / ROLE: kappa estimated from ``labels`` unless given; ROLE: its label table,
    warm-started from ``role_estimates`` (float (N, K)) when the cross-fitting driver gives
    them)."""
    from labelfix.losses import create_loss, estimate_kappa

    kw = dict(cfg.loss_kwargs or {})
    name = cfg.loss.lower()
    if role_estimates is not None and name != "role":
        raise LabelfixError(f"loss {name}: label estimates warm-start ROLE's table only")
    if name in ("epr", "role") and "kappa" not in kw:
        kw["kappa"] = float(estimate_kappa(labels))
    if name == "role":
        kw.setdefault("seed", cfg.seed)
        kw.update(num_samples=int(labels.shape[0]), num_classes=int(labels.shape[1]),
                  given_labels=np.asarray(labels), init_estimates=role_estimates)
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
