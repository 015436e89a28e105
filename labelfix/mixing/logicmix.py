# LogicMix: Chong et al., "LogicMix: Mixing Samples with Logical Operations for
# Multi-Label Classification with Partial Labels", 2024 (method: equal-weight mean of
# K images, labels combined by a logical OR extended to unknowns; official code
# maxium0526/logic_mix, mlcpl/sample_mix/logic_mix.py).
"""LogicMix on a batch, vectorised.

labelfix mixes inside the batch: the partners of sample i are drawn uniformly from the
other samples of the same batch (distinct from i and from each other). The official
code draws them uniformly over the whole dataset in ``Dataset.__getitem__``; since a
shuffled batch is a uniform random sample of the dataset, a partner drawn from the batch
is a uniform draw from the dataset too, except that it cannot repeat a batch member's
own index and costs no extra image decoding. Each sample is mixed with probability
``prob``; a mixed sample uses K images, K uniform in ``k_choices`` (capped at the batch
size). The mixed image is the plain mean of its K images.
"""

from __future__ import annotations

import torch

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS, UNK


def logic_or(labels: torch.Tensor) -> torch.Tensor:
    """Logical OR with unknowns over the first axis.

    Args:
        labels: integer (M, B, K) with 1 / 0 / -1.

    Returns:
        int8 (B, K): 1 if any member is 1; 0 if all members are 0; -1 otherwise
        (0 OR ? = ?, ? OR ? = ?).
    """
    if labels.dim() != 3 or labels.dtype.is_floating_point:
        raise LabelfixError(f"logic_or: labels {labels.dtype} {tuple(labels.shape)}: expected integer (M, B, K)")
    if not bool(((labels == POS) | (labels == NEG) | (labels == UNK)).all()):
        raise LabelfixError("logic_or: labels: values other than 1, 0, -1")
    any_pos = (labels == POS).any(dim=0)
    all_neg = (labels == NEG).all(dim=0)
    out = torch.full(labels.shape[1:], UNK, dtype=torch.int8, device=labels.device)
    out[all_neg] = NEG
    out[any_pos] = POS
    return out


def _partners(b: int, mix_count: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices (B, 3): column 0 is the sample itself; columns 1-2 are two distinct
    partners != i (used only when ``mix_count`` needs them, else set to i)."""
    dev = generator.device
    i = torch.arange(b, device=dev)
    # offsets o1 in [1, B-1], o2 in [1, B-2] shifted past o1: i+o1, i+o2 distinct and != i
    o1 = torch.randint(1, max(b, 2), (b,), generator=generator, device=dev)
    o2 = torch.randint(1, max(b - 1, 2), (b,), generator=generator, device=dev)
    o2 = o2 + (o2 >= o1).long()
    p1 = torch.where(mix_count >= 2, (i + o1) % b, i)
    p2 = torch.where(mix_count >= 3, (i + o2) % b, i)
    return torch.stack([i, p1, p2], dim=1)


def logicmix(x: torch.Tensor, labels: torch.Tensor, prob: float = 0.5, k_choices: tuple[int, ...] = (2, 3),
             *, generator: torch.Generator, return_mixed: bool = False):
    """Mix a batch with LogicMix.

    Args:
        x: images (B, C, H, W) float (any (B, ...) float tensor).
        labels: integer (B, K) with 1 / 0 / -1.
        prob: probability that a sample is mixed.
        k_choices: numbers of images per mixed sample, drawn uniformly; each in {2, 3}.
        generator: (keyword) torch.Generator driving every random choice (CPU or x's device).

        return_mixed: also return bool (B,), True for the samples that were mixed (the
            official code trains those with their own loss setting).

    Returns:
        ``(x_mixed, labels_mixed)``: same shape and dtype as ``x``; int8 (B, K); plus the
        mixed mask with ``return_mixed``. Unmixed samples are returned unchanged.
    """
    if x.dim() < 1 or labels.dim() != 2 or labels.shape[0] != x.shape[0]:
        raise LabelfixError(f"logicmix: shapes x {tuple(x.shape)}, labels {tuple(labels.shape)}: "
                            f"expected (B, ...) and (B, K)")
    if not 0.0 <= prob <= 1.0:
        raise LabelfixError(f"logicmix: prob={prob}: expected 0 <= prob <= 1")
    if not k_choices or any(k not in (2, 3) for k in k_choices):
        raise LabelfixError(f"logicmix: k_choices={k_choices}: expected values in {{2, 3}}")
    b = x.shape[0]
    dev = generator.device
    mixed = torch.rand(b, generator=generator, device=dev) < prob
    choices = torch.tensor(k_choices, device=dev)
    count = choices[torch.randint(0, len(k_choices), (b,), generator=generator, device=dev)]
    count = torch.where(mixed, torch.clamp(count, max=b), torch.ones_like(count))
    idx = _partners(b, count, generator).to(x.device)
    count = count.to(x.device)
    # plain mean of the `count` images, computed for the mixed rows only (unmixed samples
    # are copied): 1/2 (x_i + x_p1), or 1/3 (x_i + x_p1) + x_p2 / 3 for three images
    x_mixed = x.clone()
    for k in (2, 3):
        rows = torch.nonzero(count == k).flatten()
        if len(rows):
            w = 1.0 / k
            part = x[rows] * w + x[idx[rows, 1]] * w
            x_mixed[rows] = part + x[idx[rows, 2]] * w if k == 3 else part
    labels_mixed = logic_or(labels[idx.to(labels.device).T])
    if return_mixed:
        return x_mixed, labels_mixed, count > 1
    return x_mixed, labels_mixed
