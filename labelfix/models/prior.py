# Prior initialisation of the classifier bias: Lin et al., "Focal Loss for Dense Object
# Detection", ICCV 2017, Sec. 4.1 ("Initialization": the final layer's bias b = -log((1 -
# pi) / pi), so that every output starts at probability pi). labelfix takes pi per class:
# each class's positive share in the training labels (the paper uses one pi for all).
"""Class-prior initialisation of a head's output bias.

A freshly initialised head predicts about 0.5 for every class. With rare classes (a
class on 4 % of the images) the first epochs are spent pushing every output down, and a
small model trained for a user's budget may never learn the rare classes at all. Starting
each class's output at its training frequency removes that phase: on the demo digits
(mislabel 40 %, test_resnet from random weights, 4 folds x 2 rounds x 14 epochs) the
held-out error AP went from 0.554 / 0.519 / 0.545 to 0.634 / 0.572 / 0.582 (seeds 0 / 1 /
2; docs/training.md, "Class-prior bias"). ``labelfix train`` applies it by default, except with
``--loss role`` / ``--loss epr`` (:data:`labelfix.train.config.EXPECTED_POSITIVE_LOSSES`);
``--no-prior-bias`` keeps the head's own initialisation.

Every registered head exposes its additive output bias as ``head.output_bias`` (float
(K,) parameter, added to the logits); :func:`init_output_bias` writes ``logit(prior)``
into it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.labels import POS, UNK
from labelfix.numeric import logit

#: Laplace smoothing of the positive share: (positives + 1) / (cells + 2), so a class
#: without positives (or without negatives) in the training rows gets a finite bias.
SMOOTHING = 1.0


def class_prior(labels, rows=None, *, unknown_as_negative: bool, smoothing: float = SMOOTHING) -> np.ndarray:
    """float64 (K,): each class's smoothed positive share in the training labels.

    Args:
        labels: int8 (N, K) given labels 1 / 0 / -1.
        rows: int (M,) the training rows (default: all).
        unknown_as_negative: count unknown cells as negatives (losses that train them as
            negatives: the assume-negative family, large-loss); otherwise the share is over
            the known cells only (masked BCE, ASL). ``labelfix train`` refuses the prior
            with ROLE and EPR (``train.config.EXPECTED_POSITIVE_LOSSES``).
        smoothing: pseudo-count added to positives and to negatives.

    Returns:
        ``(pos + s) / (cells + 2 s)`` per class, in (0, 1).
    """
    y = np.asarray(labels)
    if rows is not None:
        y = y[np.asarray(rows)]
    pos = (y == POS).sum(0).astype(np.float64)
    cells = np.full(y.shape[1], y.shape[0], np.float64) if unknown_as_negative else (y != UNK).sum(0).astype(np.float64)
    return (pos + smoothing) / (cells + 2.0 * smoothing)


def output_bias(head: nn.Module) -> nn.Parameter:
    """The head's additive output bias (``head.output_bias``); a clear error for a head
    that has none."""
    bias = getattr(head, "output_bias", None)
    if not isinstance(bias, torch.Tensor):
        raise LabelfixError(f"head {type(head).__name__}: no output_bias to initialise from the class "
                            f"priors; pass --no-prior-bias")
    return bias


def init_output_bias(head: nn.Module, prior) -> None:
    """Set ``head.output_bias`` to ``logit(prior)`` in place (float (K,) prior in (0, 1))."""
    bias = output_bias(head)
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != tuple(bias.shape) or not np.all((p > 0) & (p < 1)):
        raise LabelfixError(f"class prior: expected {tuple(bias.shape)} values in (0, 1), got shape {p.shape}")
    with torch.no_grad():
        bias.copy_(torch.as_tensor(logit(p), dtype=bias.dtype))
