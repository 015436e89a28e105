# BalanceMix: Song, Kim, Lee, "Toward Robustness in Multi-label Classification: A Data
# Augmentation Strategy against Imbalance and Noise", AAAI 2024 (Alg. 1; Eq. 2-4 minority
# sampler, Eq. 5 mixing, Eq. 6-10 label-wise management). No official code exists; every
# open choice is named in docs/losses_and_mixing.md.
"""BalanceMix as a :class:`~labelfix.train.mixers.Mixer`.

- Missing labels are assumed negatives (the paper's problem statement); label-wise
  management decides which of them are really positive. Unknown cells therefore train
  as negatives from the first epoch and sit in the z = 0 GMM of their class.
- Every step pairs a random batch B_R with a minority batch B_M (Eq. 5, l = max(l', 1 - l'),
  l' ~ Beta(4, 4), per pair); the mixed sample inherits the reliability (state and p_G)
  of its random member.
- After each epoch (Alg. 1 lines 16-18): minority-sampler weights (Eq. 2-4, from the
  evaluation pass) and, from epoch ``warmup`` on, 2K label GMMs on the training cells'
  BCE losses -> p_G for every training cell (``p_G > clean_threshold``: clean).
- Re-labeling (Eq. 9): ``refine="batch"`` (Alg. 1 line 13) refines every mini-batch
  with the current model: for each image with a non-clean cell, c = mean probability over
  two views from the run's training augmentation, in eval mode without gradient; c >
  delta -> 1, c < 1 - delta -> 0, else ambiguous with BCE weight p_G (Eq. 10). View 1
  is the training image itself (already a draw of the training augmentation: no extra
  decoding), view 2 one more draw that the loader adds; the second view is scored only
  for images where it can change a decision (:func:`needs_second_view`, exact), and with
  a deterministic training transform not at all (both views are the training image).
  ``refine="epoch"`` computes c once per epoch after the GMM fit (two training views,
  one extra pass); ``refine="evaluation"`` takes c from the epoch's evaluation pass (one
  view, evaluation transform, no extra forward pass). ``refine="auto"`` (the default) is
  "evaluation" when the training transform is deterministic (no RandAugment, no flips, or
  --frozen features: the two views are then the evaluation view, and only the model's
  drift within an epoch separates the schedules) and "batch" otherwise. All are measured
  against "batch" in docs/benchmarks.md (cost, decisions, clean-test mAP).
- Trusted cells (verified by a reviewer, and the given positives of single-positive data)
  are always clean.
"""

from __future__ import annotations

import numpy as np
import torch

from labelfix.cleaning.gmm import clean_posterior, fit_label_gmms
from labelfix.cleaning.states import AMBIGUOUS, CLEAN, RELABELED, assign_states_block, delta_for, trusted_cells
from labelfix.io import atomic
from labelfix.labels import POS, UNK, positive_only
from labelfix.mixing.balancemix import balancemix_lambda, minority_sampling_weights, mix_pair
from labelfix.numeric import sigmoid
from labelfix.io.arrays import load_npy
from labelfix.train.data import cfg_augments
from labelfix.train.mixers import Batch, MixedBatch, Mixer, _option, register_mixer
from labelfix.train.sampler import derive_seed
from labelfix.train.stats import CHUNK_ROWS, cell_bce

REFINES = ("auto", "batch", "epoch", "evaluation")
#: warm-up epochs before the first label management (methods.md "BalanceMix" defaults)
DEFAULT_WARMUP = 10


def warmup_epochs(cfg) -> int:
    """``--balancemix-warmup`` as a run uses it (:data:`DEFAULT_WARMUP` when not given)."""
    return DEFAULT_WARMUP if cfg.balancemix_warmup is None else cfg.balancemix_warmup


def resolve_refine(refine: str, augments: bool) -> str:
    """The re-labeling schedule a run uses: ``"auto"`` is ``"batch"`` (Algorithm 1) when the
    training transform is random, else ``"evaluation"`` (the views would equal the
    evaluation pass's view; docs/benchmarks.md measured 98.7 % of the decisions alike)."""
    if refine != "auto":
        return refine
    return "batch" if augments else "evaluation"


def needs_second_view(first: np.ndarray, nonclean: np.ndarray, delta: float) -> np.ndarray:
    """bool (B,): the images whose second view can change a re-labeling decision.

    c = (p1 + p2) / 2 with p2 in [0, 1], so c > delta needs p1 > 2 delta - 1 and
    c < 1 - delta needs p1 < 2 - 2 delta. An image whose non-clean cells all have p1
    between those bounds keeps every such cell ambiguous whatever its second view says,
    and p1 alone (inside [1 - delta, delta]) then gives the same decisions as c.

    Args:
        first: float32 (B, K) probabilities of the first view.
        nonclean: bool (B, K) cells that management re-labels (p_G <= threshold).
        delta: the re-labeling threshold (>= 0.5).
    """
    eps = 1e-6   # float rounding of the mean: score the second view when in doubt
    can_flip = (first > 2.0 * delta - 1.0 - eps) | (first < 2.0 - 2.0 * delta + eps)
    return (can_flip & nonclean).any(axis=1)


def train_losses(logits, given, train_rows: np.ndarray) -> np.ndarray:
    """float32 (M, K) BCE of the training rows against ``given`` (1 / 0; -1 scored as 0)."""
    rows = np.asarray(train_rows)
    out = np.empty((rows.size, given.shape[1]), dtype=np.float32)
    for s in range(0, rows.size, CHUNK_ROWS):
        r = rows[s:s + CHUNK_ROWS]
        out[s:s + CHUNK_ROWS] = cell_bce(logits[r], np.asarray(given[r]))
    return out


def clean_probability(losses: np.ndarray, given_rows: np.ndarray) -> np.ndarray:
    """p_G (M, K) from the 2K label GMMs (NaN on unknown cells).

    NaN losses (images that failed to decode) are excluded from the fit; their cells
    come out NaN and are then treated as clean (no evidence against them)."""
    g = np.where(np.isnan(losses), np.int8(-1), np.asarray(given_rows)).astype(np.int8)
    fit = fit_label_gmms(losses, g)
    return clean_posterior(losses, g, fit)


@register_mixer("balancemix")
class BalanceMixMixer(Mixer):
    """BalanceMix (module docstring). Options: ``balancemix_warmup`` (10),
    ``balancemix_delta`` (0.55 single-positive, else 0.975), ``balancemix_clean_threshold``
    (0.5), ``balancemix_sampler`` ("sum" as Eq. 3, or "mean" over the image's cells),
    ``balancemix_refine`` ("auto", "batch", "epoch" or "evaluation")."""

    minority_batch = True
    assumes_unknown_negative = True
    TWO_VIEW_FILE = "two_view.npy"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        # one generator shared by all ranks draws l for the whole global batch (each rank
        # takes its slice), so W processes mix exactly like one
        self.pair_generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 0xBA1A))
        given = ctx.labels
        self.assumed = np.where(given == UNK, 0, given).astype(np.int8)
        single = positive_only(given, ctx.train_rows)   # single-positive labels, also after a review
        self.warmup = warmup_epochs(cfg)
        self.delta = _option(cfg, "balancemix_delta", delta_for(single))
        self.clean_threshold = _option(cfg, "balancemix_clean_threshold", 0.5)
        self.sampler_score = _option(cfg, "balancemix_sampler", "sum")
        self.refine = _option(cfg, "balancemix_refine", "auto")
        self.augments = cfg_augments(cfg)   # False with --frozen (features have no augmentation)
        if self.refine == "auto":   # only then does the training transform matter
            self.refine = resolve_refine(self.refine, self.augments)
        # single-positive data: the given positives are verified (docs/losses_and_mixing.md)
        self.trusted = trusted_cells(given, ctx.trusted, ctx.train_rows)
        self.single_positive = single
        self.p_clean: np.ndarray | None = None    # float32 (N, K) once management runs
        self.two_view: np.ndarray | None = None   # refine != "batch": c, float32 (N, K), NaN = not scored
        self.counts = np.zeros(3, dtype=np.int64)
        self.views_scored = np.zeros(2, dtype=np.int64)   # refine="batch": first / second views this epoch

    def settings(self) -> dict:
        return {"balancemix_warmup": self.warmup, "balancemix_delta": float(self.delta),
                "balancemix_clean_threshold": self.clean_threshold, "balancemix_sampler": self.sampler_score,
                "balancemix_refine": self.refine, "single_positive": bool(self.single_positive)}

    @classmethod
    def trains_unknown(cls, cfg) -> bool:
        return True   # missing labels are assumed negatives

    def views(self, epoch: int) -> int:
        # view 1 is the training image; a deterministic transform needs no second one
        return 1 if self.p_clean is not None and self.refine == "batch" and self.augments else 0

    # ------------------------------------------------------------------ per step
    def _refine_batch(self, batch: Batch, pos: torch.Tensor, nonclean: np.ndarray) -> np.ndarray:
        """``refine="batch"``: c float32 (b, K) of the samples ``pos`` from the current
        model (NaN on images without a non-clean cell, which are not scored)."""
        c = np.full(nonclean.shape, np.nan, dtype=np.float32)
        todo = np.flatnonzero(nonclean.any(1))
        if not todo.size:
            return c
        at = pos[torch.from_numpy(todo)]
        # view 1: the training image itself, a draw of the training augmentation (no
        # extra decoding); with a deterministic transform it is also view 2
        first = self.ctx.probabilities(batch.images[at]).numpy()
        c[todo] = first
        self.views_scored[0] += todo.size
        if batch.views is None:
            return c
        second = np.flatnonzero(needs_second_view(first, nonclean[todo], self.delta))
        self.views_scored[1] += second.size
        if second.size:
            p2 = self.ctx.probabilities(batch.views[at[torch.from_numpy(second)], 0]).numpy()
            c[todo[second]] = (first[second] + p2) / 2
        return c

    def _targets(self, batch: Batch, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training target float (b, K) and weight (b, K) or None of the samples ``pos``."""
        idx = batch.indices[pos].numpy()
        g = self.assumed[idx]
        if self.p_clean is None:
            return torch.from_numpy((g == POS).astype(np.float32)), None
        pc = self.p_clean[idx]
        if self.refine == "batch":
            c = self._refine_batch(batch, pos, pc <= self.clean_threshold)
        else:
            c = self.two_view[idx]
        state, target, weight = assign_states_block(g, pc, c, clean_threshold=self.clean_threshold, delta=self.delta)
        self.counts += np.bincount(state.ravel(), minlength=4)[:3]
        return torch.from_numpy((target == POS).astype(np.float32)), torch.from_numpy(weight)

    def mix(self, batch: Batch) -> MixedBatch:
        pos_r = torch.nonzero(batch.slots == 0).flatten()
        pos_m = torch.nonzero(batch.slots == 1).flatten()
        n = min(pos_r.numel(), pos_m.numel())   # pairs whose members both decoded
        pos_r, pos_m = pos_r[:n], pos_m[:n]
        t_r, w_r = self._targets(batch, pos_r)
        t_m, _ = self._targets(batch, pos_m)
        b = self.cfg.batch_size
        lam = balancemix_lambda(b * self.ctx.world_size, self.pair_generator)[self.ctx.rank * b + torch.arange(n)]
        x, target = mix_pair(batch.images[pos_r], batch.images[pos_m], t_r, t_m, lam)
        return MixedBatch(x, target, torch.ones_like(target, dtype=torch.bool), w_r, batch.indices[pos_r])

    # ------------------------------------------------------------------ per epoch
    def needs_training_logits(self, epoch: int) -> bool:
        return True   # minority sampler every epoch, label GMMs after the warm-up

    def on_epoch_end(self, epoch: int, logits, fresh: bool) -> dict:
        rows = self.ctx.train_rows
        # "sum" (Eq. 3) scores the training labels, missing ones assumed negative; "mean"
        # averages over the cells a person labelled (unknown cells skipped), so an image's
        # score does not depend on how many of its labels are missing. On fully labelled
        # data the two differ by a constant and sample alike.
        z = self.assumed[rows] if self.sampler_score == "sum" else self.ctx.labels[rows]
        res = minority_sampling_weights(sigmoid(np.nan_to_num(np.asarray(logits[rows], dtype=np.float32))),
                                        z, score_reduction=self.sampler_score)
        self.ctx.sampler.set_minority_weights(res.weights)
        info = {"minority_min_max_ratio": res.min_max_ratio}
        # every rank's steps (each rank calls on_epoch_end)
        counts, views_scored = np.split(self.ctx.sum_over_ranks(np.r_[self.counts, self.views_scored]).astype(np.int64), [3])
        if counts.any():   # states the previous management gave this epoch's cells
            info.update({f"cells_{name}": int(v) for name, v in zip(("clean", "relabeled", "ambiguous"), counts)})
        if views_scored.any():   # re-labeling forward passes: images scored on one / two views
            info.update(relabel_first_views=int(views_scored[0]), relabel_second_views=int(views_scored[1]))
        self.counts[:] = 0
        self.views_scored[:] = 0
        if epoch + 1 < self.warmup:
            self.p_clean = None
            return info
        p_rows = clean_probability(train_losses(logits, self.assumed, rows), self.assumed[rows])
        p_clean = np.ones(self.assumed.shape, dtype=np.float32)
        p_clean[rows] = np.nan_to_num(p_rows, nan=1.0)
        p_clean[self.trusted] = 1.0
        self.p_clean = p_clean
        nonclean = p_clean[rows] <= self.clean_threshold
        info["cells_nonclean"] = int(nonclean.sum())
        if self.refine == "epoch":
            info["rescored_images"] = self._epoch_two_view(rows, nonclean, fresh)
        elif self.refine == "evaluation":
            # c = the pass's own probabilities (deterministic: a resumed run recomputes it)
            c = np.full(self.assumed.shape, np.nan, dtype=np.float32)
            c[rows] = np.where(nonclean, sigmoid(np.asarray(logits[rows], dtype=np.float32)), np.nan)
            self.two_view = c
        return info

    def _epoch_two_view(self, rows: np.ndarray, nonclean: np.ndarray, fresh: bool) -> int:
        """``refine="epoch"``: c of the non-clean cells from one two-view pass (stored in
        stats/two_view.npy so a resumed run re-uses it). Returns the images scored."""
        path = self.ctx.out / "stats" / self.TWO_VIEW_FILE
        todo = np.flatnonzero(nonclean.any(1))
        if fresh:
            two_view = np.full(self.assumed.shape, np.nan, dtype=np.float32)
            if todo.size:
                c = self.ctx.score_rows(None, rows[todo], views=2)
                two_view[rows[todo]] = np.where(nonclean[todo], c, np.nan)
            # float32 on disk too: float16 rounds 0.97485..0.975 up past delta (Eq. 9's > is strict)
            if self.ctx.rank == 0:
                atomic.write_npy(path, two_view)
        else:
            two_view = load_npy(path)
        self.two_view = two_view.astype(np.float32)   # a run written before 2026-12-07: float16
        return int(todo.size)

    def state_dict(self) -> dict:
        # the epoch's counts too: the checkpoint is written before the end of the epoch,
        # which a resumed run re-does when a kill interrupted it (evaluate.resume_finalize)
        return {**super().state_dict(), "pair_generator": self.pair_generator.get_state(),
                "counts": self.counts.tolist(), "views_scored": self.views_scored.tolist()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pair_generator.set_state(state["pair_generator"])
        # checkpoints from before the counts were saved: the epoch's counts start at 0
        self.counts[:] = state.get("counts", 0)
        self.views_scored[:] = state.get("views_scored", 0)


__all__ = ["AMBIGUOUS", "CLEAN", "DEFAULT_WARMUP", "RELABELED", "REFINES", "BalanceMixMixer", "clean_probability",
           "needs_second_view", "resolve_refine", "train_losses", "warmup_epochs"]
