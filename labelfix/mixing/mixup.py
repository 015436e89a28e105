# Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018
# (x = l x_a + (1 - l) x_b, y = l y_a + (1 - l) y_b, l ~ Beta(alpha, alpha)).
"""Mixup for partially labeled multi-label batches, plus the seeded Beta sampler the
other mixing functions share.

One l per batch (as in the paper's reference code); the partner of sample i is
``perm[i]`` for a random permutation of the batch. A mixed cell is known only when it is
known in both members (an unknown member could carry either label, so the mixed target
is undetermined); its target is 0 elsewhere (no loss is taken there).
"""

from __future__ import annotations

import numpy as np
import torch

from labelfix.errors import LabelfixError


def sample_beta(alpha: float, beta: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` samples of Beta(alpha, beta) as float32 (CPU), reproducible from
    ``generator`` (torch has no generator-aware Beta sampler: one 63-bit seed is drawn
    from ``generator`` and feeds numpy's Beta sampler)."""
    if not (alpha > 0 and beta > 0):
        raise LabelfixError(f"mixing: Beta({alpha}, {beta}): parameters must be > 0")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    values = np.random.default_rng(seed).beta(alpha, beta, size=size)
    return torch.from_numpy(values.astype(np.float32))


def _check_batch(x: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> None:
    if x.dim() < 1 or target.dim() != 2 or target.shape[0] != x.shape[0] or known.shape != target.shape:
        raise LabelfixError(f"mixup: shapes x {tuple(x.shape)}, target {tuple(target.shape)}, "
                            f"known {tuple(known.shape)}: expected (B, ...), (B, K), (B, K)")
    if known.dtype != torch.bool:
        raise LabelfixError(f"mixup: known dtype {known.dtype}: expected torch.bool")


def mixup(x: torch.Tensor, target: torch.Tensor, known: torch.Tensor, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each sample with a random partner of the same batch.

    Args:
        x: images (B, C, H, W) (any (B, ...) float tensor).
        target: float (B, K) in [0, 1].
        known: bool (B, K).
        alpha: Beta(alpha, alpha) parameter, > 0.
        generator: drives the permutation and l.

    Returns:
        ``(x_mixed, target_mixed, known_mixed)`` with the input shapes.
    """
    _check_batch(x, target, known)
    b = x.shape[0]
    lam = float(sample_beta(alpha, alpha, 1, generator)[0])
    perm = torch.randperm(b, generator=generator, device=generator.device).to(x.device)
    return mixup_with(x, target, known, lam, perm)


def mixup_with(x: torch.Tensor, target: torch.Tensor, known: torch.Tensor, lam: float,
               perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix sample i with sample ``perm[i]`` with weight ``lam`` (shapes as :func:`mixup`;
    ``perm`` long (B,)): the images, the targets, and the known mask (known where both
    members are known; target 0 elsewhere)."""
    _check_batch(x, target, known)
    x_mixed = x * lam + x[perm] * (1.0 - lam)
    known_mixed = known & known[perm]
    t = target * lam + target[perm] * (1.0 - lam)
    target_mixed = torch.where(known_mixed, t, torch.zeros_like(t))
    return x_mixed, target_mixed, known_mixed
