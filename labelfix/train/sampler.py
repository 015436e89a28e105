"""Seeded, resumable, distributed-aware epoch samplers.

Every epoch's order is a pure function of ``(seed, epoch)``: a resumed run re-creates
exactly the batches of an uninterrupted one, and on ``W`` ranks each rank takes its
contiguous slice of every *global* batch of the same global permutation, so one process
with batch ``W * B`` sees the same batches as ``W`` processes with batch ``B``.

Each yielded batch is a list of ``SampleKey``s ``(index, seed, slot)``: the dataset
index, a per-sample seed for its random augmentation (so augmentation does not depend
on workers, ranks or interruptions) and the slot (0 = random sampler, 1 = BalanceMix
minority sampler).

BalanceMix minority sampler (Song, Kim, Lee, AAAI 2024, Sec. "Minority sampling"): each
step also draws a minority batch of the same size with probability proportional to
``1 / Score(x)``; the weights are updated once per epoch and are part of the state.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

_MIX = 0x9E3779B97F4A7C15


class SampleKey(NamedTuple):
    index: int
    seed: int
    slot: int


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (splitmix64 chain), stable across runs."""
    x = 0x243F6A8885A308D3
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + _MIX) & 0xFFFFFFFFFFFFFFFF
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x = z ^ (z >> 31)
    return x & 0x7FFFFFFFFFFFFFFF


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


class EpochBatchSampler:
    """Batches of ``SampleKey`` over ``indices`` (the training images' dataset indices).

    Args:
        indices: int array (M,) of dataset indices to train on.
        batch_size: per-rank batch size B; a global batch is ``B * world_size``.
        seed: run seed.
        world_size, rank: distributed layout (1, 0 without torchrun).
        minority: also draw a BalanceMix minority batch of B per step (yielding 2B keys:
            B random then B minority).

    ``len()`` = steps per epoch = ``max(1, M // (B * world_size))`` (a short last global
    batch is dropped; with fewer images than one global batch the permutation wraps).
    """

    def __init__(self, indices, batch_size: int, seed: int, world_size: int = 1, rank: int = 0,
                 minority: bool = False):
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("no training images")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.minority = bool(minority)
        self.epoch = 0
        # sampling weights over self.indices (None = uniform); set once per epoch
        self.minority_weights: np.ndarray | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return max(1, self.indices.size // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_minority_weights(self, weights: np.ndarray | None) -> None:
        """Per-training-image sampling weights (M,), non-negative; None = uniform."""
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != self.indices.shape:
                raise ValueError(f"minority weights shape {weights.shape} != {self.indices.shape}")
            if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
                raise ValueError("minority weights must be finite, >= 0 and not all 0")
        self.minority_weights = weights

    def global_order(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(random order, minority order) of positions into ``indices`` for the whole
        epoch, each of length ``len(self) * global_batch`` (minority None if off)."""
        epoch = self.epoch if epoch is None else epoch
        total = len(self) * self.global_batch
        m = self.indices.size
        perm = torch.randperm(m, generator=_generator(self.seed, epoch, 0)).numpy()
        if total > m:
            perm = np.resize(perm, total)
        perm = perm[:total]
        minority = None
        if self.minority:
            g = _generator(self.seed, epoch, 1)
            if self.minority_weights is None:
                minority = torch.randint(0, m, (total,), generator=g).numpy()
            else:
                w = torch.as_tensor(self.minority_weights, dtype=torch.float64)
                minority = torch.multinomial(w, total, replacement=True, generator=g).numpy()
        return perm, minority

    def __iter__(self) -> Iterator[list[SampleKey]]:
        perm, minority = self.global_order()
        gb, b = self.global_batch, self.batch_size
        for step in range(len(self)):
            lo = step * gb + self.rank * b
            keys = [SampleKey(int(self.indices[p]), derive_seed(self.seed, self.epoch, 0, lo + j), 0)
                    for j, p in enumerate(perm[lo:lo + b])]
            if minority is not None:
                keys += [SampleKey(int(self.indices[p]), derive_seed(self.seed, self.epoch, 1, lo + j), 1)
                         for j, p in enumerate(minority[lo:lo + b])]
            yield keys

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_indices": int(self.indices.size),
            "minority": self.minority,
            "minority_weights": None if self.minority_weights is None
            else torch.as_tensor(self.minority_weights, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_indices"]) != self.indices.size or int(state["seed"]) != self.seed:
            raise ValueError("sampler state is from a different dataset split or seed")
        self.epoch = int(state["epoch"])
        w = state.get("minority_weights")
        self.set_minority_weights(None if w is None else w.numpy())


class ShardSampler:
    """Evaluation order over ``n`` items: rank r gets contiguous batches of the padded
    range so that every rank runs the same number of batches (for all_gather); padded
    keys repeat the last index and are dropped after gathering.

    Yields lists of ``SampleKey`` (seed derived from ``(seed, tag, index)``).
    """

    def __init__(self, indices, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, tag: int = 0):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.tag = int(tag)

    def __len__(self) -> int:
        gb = self.batch_size * self.world_size
        return (self.indices.size + gb - 1) // gb

    def __iter__(self) -> Iterator[list[SampleKey]]:
        gb, b, n = self.batch_size * self.world_size, self.batch_size, self.indices.size
        for step in range(len(self)):
            lo = step * gb + self.rank * b
            pos = np.minimum(np.arange(lo, lo + b), n - 1)
            yield [SampleKey(int(self.indices[p]), derive_seed(self.seed, self.tag, int(self.indices[p])), 0)
                   for p in pos]

    def valid_count(self, step: int) -> list[int]:
        """How many of each rank's ``batch_size`` keys in global ``step`` are real."""
        gb, b, n = self.batch_size * self.world_size, self.batch_size, self.indices.size
        return [int(np.clip(n - (step * gb + r * b), 0, b)) for r in range(self.world_size)]
