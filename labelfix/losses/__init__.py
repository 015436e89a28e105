"""Partial-label losses behind one interface and a name registry.

Every loss is an ``nn.Module`` with
``forward(logits, target, known, weight=None, index=None) -> scalar``
(shapes and reduction: ``labelfix.losses.bce``; user docs: docs/losses_and_mixing.md).

Example::

    loss = create_loss("an-ls")
    target, known = split_labels(batch_labels)   # int8 (B, K) 1/0/-1
    loss(logits, target, known).backward()
"""

from __future__ import annotations

import inspect
import numbers
from typing import Callable

from torch import nn

from labelfix.errors import LabelfixError
from labelfix.losses.asl import AsymmetricLoss
from labelfix.losses.bce import AssumeNegativeLoss, MaskedBCELoss, WeakAssumeNegativeLoss, split_labels
from labelfix.losses.large_loss import LargeLossLoss
from labelfix.losses.spl import (ExpectedPositiveLoss, RoleLoss, estimate_kappa, estimates_from_held_out,
                                 kappa_from_held_out)

__all__ = [
    "AssumeNegativeLoss", "AsymmetricLoss", "ExpectedPositiveLoss", "LargeLossLoss", "MaskedBCELoss",
    "RoleLoss", "WeakAssumeNegativeLoss", "create_loss", "estimate_kappa", "estimates_from_held_out",
    "kappa_from_held_out", "list_losses",
    "register_loss", "split_labels", "target_smoothing", "trains_unknown",
]

# name -> (factory, fixed keyword arguments the name implies)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict]] = {}


def register_loss(name: str, factory: Callable[..., nn.Module], **fixed) -> None:
    """Register ``factory`` under ``name``; ``fixed`` kwargs are implied by the name and
    cannot be overridden by ``create_loss`` callers."""
    if name in _REGISTRY:
        raise LabelfixError(f"loss {name!r}: already registered")
    _REGISTRY[name] = (factory, dict(fixed))


register_loss("bce", MaskedBCELoss)
register_loss("an", AssumeNegativeLoss, label_smoothing=0.0)
register_loss("an-ls", AssumeNegativeLoss, label_smoothing=0.1)
register_loss("wan", WeakAssumeNegativeLoss)
register_loss("asl", AsymmetricLoss)
register_loss("epr", ExpectedPositiveLoss)
register_loss("role", RoleLoss)
register_loss("ll-r", LargeLossLoss, mode="reject")
register_loss("ll-ct", LargeLossLoss, mode="correct")


def trains_unknown(name: str) -> bool:
    """Whether the loss registered as ``name`` gives unknown cells a training target (the
    assume-negative family, ROLE's label table, large-loss rejection do; masked BCE, ASL
    and EPR do not). A model trained without such targets never saw a label on an unknown
    cell, so its prediction there is out of sample even for an image it trained on
    (``labelfix.train.crossfit`` uses this). A loss class without the attribute counts as
    training them."""
    if name.lower() not in _REGISTRY:   # e.g. "auto" before labelfix.train.optim.resolve_loss
        raise LabelfixError(f"loss {name!r}: not a registered loss ({', '.join(_REGISTRY)})")
    factory, _ = _REGISTRY[name.lower()]
    return bool(getattr(factory, "trains_unknown", True))


def target_smoothing(name: str) -> float:
    """eps of the smoothed targets ``eps + (1 - 2 eps) t`` that the loss registered as
    ``name`` trains towards (0.1 for "an-ls", else 0): what a model's probabilities must
    be unsmoothed by before they are read as label frequencies
    (:func:`kappa_from_held_out`)."""
    if name.lower() not in _REGISTRY:
        raise LabelfixError(f"loss {name!r}: not a registered loss ({', '.join(_REGISTRY)})")
    return float(_REGISTRY[name.lower()][1].get("label_smoothing", 0.0))


def list_losses() -> list[str]:
    """Registered loss names, in registration order."""
    return list(_REGISTRY)


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` with the given keyword arguments.

    Raises ``LabelfixError`` for an unknown name, an argument the loss does not take,
    or an argument fixed by the name (e.g. ``label_smoothing`` for "an-ls").
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise LabelfixError(f"loss {name!r}: unknown; choose one of {', '.join(_REGISTRY)}")
    factory, fixed = _REGISTRY[key]
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise LabelfixError(f"loss {name!r}: {', '.join(clash)}: fixed by the loss name")
    accepted = {p: v for p, v in inspect.signature(factory).parameters.items()
                if v.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    extra = sorted(set(kwargs) - set(accepted))
    if extra:
        raise LabelfixError(f"loss {name!r}: {', '.join(extra)}: not an option of this loss "
                            f"(options: {', '.join(p for p in accepted if p not in fixed) or 'none'})")
    for key, value in kwargs.items():   # a number where the default is one (YAML may give a string or list)
        default = accepted[key].default
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise LabelfixError(f"loss {name!r}: {key}: {value!r} is not a number")
    try:
        return factory(**fixed, **kwargs)
    except (TypeError, ValueError) as err:  # a required argument is missing, a value out of range
        raise LabelfixError(f"loss {name!r}: {err}") from None
