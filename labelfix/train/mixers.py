# Mixing methods behind one interface for the training engine: timm's ``mixup_fn(x, y)``
# idea, plus per-epoch hooks for methods that keep state. Each class names its paper;
# the pure tensor functions live in labelfix.mixing.
"""Mixers: how a training batch becomes the tensors the loss sees.

The engine knows no method by name. Per step it builds a :class:`Batch` and calls
``mixer.mix(batch) -> MixedBatch`` and ``mixer.loss(logits, mixed, loss_fn)``; after
every epoch's evaluation pass it calls ``mixer.on_epoch_end(epoch, logits, fresh)``.
A mixer declares what the data pipeline must give it: ``minority_batch`` (the sampler
draws a second, BalanceMix minority batch per step) and ``views(epoch)`` (extra
augmented views of every training image, for re-labeling with the current model).

Registry: ``create_mixer(name, cfg, ctx)``, ``list_mixers()``, ``register_mixer``.
Options each method uses are listed in ``labelfix.train.config.MIXER_OPTIONS``; giving
an option to a method that does not use it is an error (``TrainConfig.validate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import POS, UNK
from labelfix.losses import split_labels
from labelfix.io.arrays import load_npy
from labelfix.train.sampler import derive_seed


@dataclass
class Batch:
    """One training step's images as loaded.

    images: float (B, C, H, W) (or (B, D) features); labels: int8 (B, K) given labels
    1 / 0 / -1; indices: long (B,) dataset rows; slots: long (B,) 0 = random sampler,
    1 = minority sampler; views: float (B, V, C, H, W) extra augmented views, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    slots: torch.Tensor
    views: torch.Tensor | None = None


@dataclass
class MixedBatch:
    """What the model and the loss see: input ``x`` (B', ...), ``target`` float (B', K)
    in [0, 1], ``known`` bool (B', K), ``weight`` float (B', K) or None, ``index`` long
    (B',) dataset row of each sample (ROLE's table), ``extra``: method-specific tensors."""

    x: torch.Tensor
    target: torch.Tensor
    known: torch.Tensor
    weight: torch.Tensor | None
    index: torch.Tensor
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "MixedBatch":
        def move(v):
            return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

        return MixedBatch(*(move(getattr(self, f.name)) for f in fields(self) if f.name != "extra"),
                          extra={k: move(v) for k, v in self.extra.items()})


class TrainContext(Protocol):
    """What the engine offers a mixer (the ``Trainer`` implements it)."""

    labels: np.ndarray        # int8 (N, K), the given labels
    trusted: np.ndarray       # bool (N, K), cells label management must never change
    train_rows: np.ndarray    # int64 (M,), rows trained on
    out: Path                 # run directory
    sampler: object           # EpochBatchSampler (``set_minority_weights``)
    ema_model: nn.Module | None
    rank: int
    world_size: int

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Current model, eval mode, no grad: float32 (B, K) probabilities on the CPU;
        (B, V, ...) inputs are averaged over the V views."""

    def score_rows(self, model: nn.Module, rows: np.ndarray, views: int = 0) -> np.ndarray:
        """float32 (len(rows), K): logits of ``model`` on ``rows`` (evaluation transform),
        or with ``views`` > 0 the mean probability over that many training views."""

    def sum_over_ranks(self, values) -> np.ndarray:
        """float64 vector ``values`` summed over the torchrun processes (every rank calls)."""


def _given_targets(labels: torch.Tensor):
    target, known = split_labels(labels)
    return target, known, None


class Mixer:
    """No mixing: the batch as loaded, masked targets from the given labels."""

    name = "none"
    #: the sampler also draws a minority batch (BalanceMix) per step
    minority_batch = False
    #: the method itself trains missing labels as negatives from the first epoch on its
    #: own terms (BalanceMix), so ``--loss auto`` keeps masked BCE on positive-only labels
    #: (``labelfix.train.optim.resolve_loss``)
    assumes_unknown_negative = False

    def __init__(self, cfg, ctx: TrainContext):
        self.cfg, self.ctx = cfg, ctx
        # per-rank generator of the method's random choices (restored on resume)
        self.generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 0xB1E5 + ctx.rank))

    def views(self, epoch: int) -> int:
        """Extra augmented views of each training image needed in ``epoch``."""
        return 0

    @classmethod
    def trains_unknown(cls, cfg) -> bool:
        """Whether the method gives unknown cells a training target (mixing alone does
        not: a mixed cell is unknown where a member's is)."""
        return False

    def mix(self, batch: Batch) -> MixedBatch:
        return MixedBatch(batch.images, *_given_targets(batch.labels), batch.indices)

    def loss(self, logits: torch.Tensor, mixed: MixedBatch, loss_fn: Callable) -> torch.Tensor:
        return loss_fn(logits, mixed.target, mixed.known, mixed.weight, mixed.index)

    def needs_training_logits(self, epoch: int) -> bool:
        """Whether :meth:`on_epoch_end` of ``epoch`` reads the logits of the training rows
        (a cross-fitted fold model scores only its held-out rows before the last epoch
        otherwise, ``labelfix.train.evaluate.epoch_rows``)."""
        return False

    def on_epoch_end(self, epoch: int, logits, fresh: bool) -> dict:
        """After the evaluation pass of ``epoch`` (0-based): update per-epoch state from
        the pass's logits (float16 (N, K)); ``fresh`` False on resume (rebuild the state
        the finished epoch left, from files). Returns metrics-row entries."""
        return {}

    def settings(self) -> dict:
        """The resolved options of the method (recorded in config.yaml)."""
        return {}

    def state_dict(self) -> dict:
        return {"mix_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["mix_generator"])


_MIXERS: dict[str, type[Mixer]] = {}


def register_mixer(name: str):
    """Class decorator: register a :class:`Mixer` subclass under ``name``."""

    def deco(cls: type[Mixer]) -> type[Mixer]:
        if name in _MIXERS:
            raise LabelfixError(f"mix {name!r}: already registered")
        cls.name = name
        _MIXERS[name] = cls
        return cls

    return deco


def list_mixers() -> list[str]:
    """Registered method names, in registration order."""
    return list(_MIXERS)


def mixer_class(name: str) -> type[Mixer]:
    """The class registered as ``name`` (one clear line for an unknown name)."""
    try:
        return _MIXERS[name]
    except KeyError:
        raise LabelfixError(f"mix {name!r}: unknown; choose one of {', '.join(_MIXERS)}") from None


def create_mixer(name: str, cfg, ctx: TrainContext) -> Mixer:
    """The mixer registered as ``name`` for this run; one clear line for an unknown name."""
    return mixer_class(name)(cfg, ctx)


register_mixer("none")(Mixer)


def _option(cfg, name: str, default):
    value = getattr(cfg, name)
    return default if value is None else value


@register_mixer("mixup")
class MixupMixer(Mixer):
    """Mixup (Zhang et al., ICLR 2018): one l ~ Beta(a, a) per batch, applied to a batch
    with probability ``mix_prob`` (default 0.5); ``mixup_alpha`` default 0.8 (timm)."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.prob = _option(cfg, "mix_prob", 0.5)
        self.alpha = _option(cfg, "mixup_alpha", 0.8)

    def settings(self) -> dict:
        return {"mix_prob": self.prob, "mixup_alpha": self.alpha}

    def mix(self, batch: Batch) -> MixedBatch:
        from labelfix.mixing.mixup import mixup

        target, known, _ = _given_targets(batch.labels)
        x = batch.images
        if float(torch.rand(1, generator=self.generator)) < self.prob:
            x, target, known = mixup(x, target, known, self.alpha, self.generator)
        return MixedBatch(x, target, known, None, batch.indices)


@register_mixer("logicmix")
class LogicMixMixer(Mixer):
    """LogicMix (Chong et al. 2024; official code maxium0526/logic_mix).

    Each sample is mixed with probability ``mix_prob`` (0.5) with 1-2 partners (equal
    weights, logical-OR labels with unknowns). The official code trains original samples
    with ASL (gamma+ 0, gamma- 4, margin 0.05: ``--loss asl``'s defaults) and mixed samples
    with their own ASL setting, gamma+ 4, gamma- 0, margin 0 (``logicmix_mixed_loss="asl"``);
    the two settings are a pair (the focusing flips), so that is the default with
    ``--loss asl``, and with any other loss the mixed samples use the run's loss too
    (``"same"``). The batch loss weighs the two parts by their sample counts (the official
    code sums over cells, so each sample counts equally).

    Curriculum Labeling (``curriculum_start`` = E, 1-based epoch; off when None): after
    every epoch >= E, the EMA model (the model itself without ``--ema``) scores the
    training images without augmentation; unknown cells with logit > 4 become pseudo-
    positives and < -4 pseudo-negatives for the next epoch, recomputed every epoch, and
    are OR-mixed like given labels (the official order: pseudo-labels, then LogicMix).
    """

    #: Curriculum Labeling's logit threshold (paper / official code)
    CURRICULUM_LOGIT = 4.0
    FILE = "curriculum_labels.npy"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from labelfix.losses import create_loss

        self.prob = _option(cfg, "mix_prob", 0.5)
        self.mixed_loss_name = _option(cfg, "logicmix_mixed_loss", "asl" if cfg.loss == "asl" else "same")
        self.mixed_loss = (create_loss("asl", gamma_pos=4.0, gamma_neg=0.0, margin=0.0)
                           if self.mixed_loss_name == "asl" else None)
        self.curriculum_start = cfg.curriculum_start
        self.labels = None   # int8 (N, K) with pseudo-labels once the curriculum runs

    @classmethod
    def trains_unknown(cls, cfg) -> bool:
        return cfg.curriculum_start is not None   # pseudo-labels on unknown cells

    def settings(self) -> dict:
        return {"mix_prob": self.prob, "logicmix_mixed_loss": self.mixed_loss_name,
                "curriculum_start": self.curriculum_start}

    def mix(self, batch: Batch) -> MixedBatch:
        from labelfix.mixing.logicmix import logicmix

        labels = batch.labels
        if self.labels is not None:
            labels = torch.from_numpy(self.labels[batch.indices.numpy()])
        x, lab, mixed = logicmix(batch.images, labels, self.prob, generator=self.generator, return_mixed=True)
        target, known = split_labels(lab)
        return MixedBatch(x, target, known, None, batch.indices, extra={"mixed": mixed})

    def loss(self, logits, mixed: MixedBatch, loss_fn):
        m = mixed.extra["mixed"]
        if self.mixed_loss is None or not bool(m.any()):
            return super().loss(logits, mixed, loss_fn)
        o = ~m
        total = self.mixed_loss(logits[m], mixed.target[m], mixed.known[m]) * m.sum()
        if bool(o.any()):
            total = total + loss_fn(logits[o], mixed.target[o], mixed.known[o], None, mixed.index[o]) * o.sum()
        return total / logits.shape[0]

    def needs_training_logits(self, epoch: int) -> bool:
        return self.curriculum_start is not None and epoch + 1 >= self.curriculum_start

    def on_epoch_end(self, epoch: int, logits, fresh: bool) -> dict:
        if self.curriculum_start is None or epoch + 1 < self.curriculum_start:
            return {}
        path = self.ctx.out / "stats" / self.FILE
        if fresh:
            rows = self.ctx.train_rows
            model = self.ctx.ema_model
            scores = (self.ctx.score_rows(model, rows) if model is not None
                      else np.asarray(logits[rows], dtype=np.float32))
            given = self.ctx.labels
            labels = np.array(given, dtype=np.int8, copy=True)
            unk = given[rows] == UNK
            pseudo = np.where(scores > self.CURRICULUM_LOGIT, 1, np.where(scores < -self.CURRICULUM_LOGIT, 0, UNK))
            labels[rows] = np.where(unk, pseudo, given[rows]).astype(np.int8)
            if self.ctx.rank == 0:
                atomic.write_npy(path, labels)
        else:
            labels = load_npy(path)
        self.labels = labels
        rows = self.ctx.train_rows
        added = (self.ctx.labels[rows] == UNK) & (labels[rows] != UNK)
        return {"pseudo_positive": int((added & (labels[rows] == POS)).sum()),
                "pseudo_negative": int((added & (labels[rows] == 0)).sum())}


@register_mixer("icmixup")
class ICMixupMixer(Mixer):
    """Infinite Class Mixup (Mensink & Mettes, BMVC 2023; official code psmmettes/icm).

    One l ~ Beta(a, a) per batch (``mixup_alpha``, default 0.2 as in the official code),
    partner = a random permutation, the batch mixed with probability ``mix_prob`` (default
    1: every batch, as the paper; an unmixed batch is scored with l = 1).

    ``icm_mode="single"`` (single-label data: one positive per image, no unknown cell;
    ``"auto"`` picks it then): the paper's loss CE(M, I) + CE(M^T, I) replaces the
    classification loss. ``"multi"``: the run's ``--loss`` on the mixed targets (mixup's
    targets) plus ``icm_weight`` (default 1, as the official icRegMixup) times the
    multi-label adaptation of :mod:`labelfix.mixing.icmixup`.
    """

    MODES = ("auto", "single", "multi")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.prob = _option(cfg, "mix_prob", 1.0)
        self.alpha = _option(cfg, "mixup_alpha", 0.2)
        self.weight = _option(cfg, "icm_weight", 1.0)
        mode = _option(cfg, "icm_mode", "auto")
        if mode != "multi":   # images that are not single-label (one positive, no unknown cell)
            rows = ctx.labels[ctx.train_rows]
            not_single = int((((rows == POS).sum(1) != 1) | (rows == UNK).any(1)).sum())
        if mode == "auto":
            mode = "single" if rows.size and not not_single else "multi"
        elif mode == "single" and not_single:   # the paper's loss takes one class per image
            raise LabelfixError(f"train: --icm-mode single: the paper's loss needs single-label data (one positive "
                                f"per image, no unknown cell); {not_single} of {rows.shape[0]} training images are "
                                f"not; use --icm-mode multi (or auto)")
        self.mode = mode
        if mode == "single":   # the paper's loss replaces the classification loss
            unused = [name for name, given in (("--loss " + cfg.loss, cfg.loss != "bce"),
                                               ("--loss-kwargs", bool(cfg.loss_kwargs)),
                                               ("--icm-weight", cfg.icm_weight is not None)) if given]
            if unused:
                raise LabelfixError(f"train: {', '.join(unused)}: not used by --mix icmixup in single mode (single-"
                                    f"label data: the paper's loss replaces the classification loss); drop it, or "
                                    f"pass --icm-mode multi")

    def settings(self) -> dict:
        # single mode has no weight (recording one would make a resume pass it back, refused)
        return {"mix_prob": self.prob, "mixup_alpha": self.alpha, "icm_mode": self.mode,
                "icm_weight": self.weight if self.mode == "multi" else None}

    def mix(self, batch: Batch) -> MixedBatch:
        from labelfix.mixing.mixup import mixup_with, sample_beta

        target, known, _ = _given_targets(batch.labels)
        b = batch.images.shape[0]
        lam = float(sample_beta(self.alpha, self.alpha, 1, self.generator)[0])
        perm = torch.randperm(b, generator=self.generator)
        if float(torch.rand(1, generator=self.generator)) >= self.prob:
            lam = 1.0
        x, t, k = mixup_with(batch.images, target, known, lam, perm)
        return MixedBatch(x, t, k, None, batch.indices,
                          extra={"lam": lam, "perm": perm, "target": target, "known": known})

    def loss(self, logits, mixed: MixedBatch, loss_fn):
        from labelfix.mixing.icmixup import icm_loss_multilabel, icm_loss_single, normalised_positive_sets

        lam, perm = mixed.extra["lam"], mixed.extra["perm"]
        if self.mode == "single":
            y = mixed.extra["target"].argmax(1)
            return icm_loss_single(logits, y, y[perm], lam)
        sets = normalised_positive_sets(mixed.extra["target"], mixed.extra["known"])
        return super().loss(logits, mixed, loss_fn) + self.weight * icm_loss_multilabel(logits, sets, sets[perm], lam)


# BalanceMix lives in its own module (it keeps the most state); importing it registers it
import labelfix.train.balancemix  # noqa: E402,F401  (importing it registers "balancemix")
