"""Models: a timm backbone plus a multi-label head, built by name.

``create_model("resnet50", "q2l", num_classes=80)`` returns a :class:`MultiLabelModel`
whose ``forward(x)`` maps images float (B, 3, H, W) to logits float (B, K). Heads are
registered by name (``list_heads()``); ``model_config(model)`` is the checkpoint's
``"model_config"`` (docs/internals.md) and ``model_from_checkpoint`` rebuilds the
module from a checkpoint dict.

Backbones come from ``timm.create_model(name, num_classes=0)``; heads that consume the
feature map also pass ``global_pool=''``. Weights: ``pretrained=True`` downloads timm's
hub weights (without network and cache: a one-line ``LabelfixError`` naming
``--weights FILE`` and ``--no-pretrained``), ``weights=FILE`` loads an offline file
(``.pth``/``.pt``/``.bin`` or ``.safetensors``) -- either a backbone state dict (every
backbone tensor or a one-line error, by name or, in another naming, by order:
:mod:`labelfix.models.weights`; a classifier in the file is dropped) or a full labelfix
model / checkpoint (keys ``backbone.*`` and ``head.*``; the head is loaded only when its
shapes match, e.g. the same classes). ``model.weights_report`` records what a file gave.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.models.linear import LinearHead
from labelfix.models.mldecoder import MLDecoderHead
from labelfix.models.q2l import Query2LabelHead
from labelfix.models.weights import (
    WeightsReport, _first_line, load_backbone_weights, read_state_dict, strip_prefixes,
)

__all__ = [
    "MultiLabelModel", "create_model", "list_heads", "register_head", "load_weights",
    "model_config", "load_checkpoint", "model_from_checkpoint", "EnsembleModel", "EVAL_CROP_MODE", "WeightsReport",
]

_logger = logging.getLogger(__name__)

#: Resize mode of the evaluation transform recorded in ``model_config``: timm's
#: ``create_transform(is_training=False, crop_pct=1.0, crop_mode="squash")`` resizes to
#: exactly (S, S) with no crop. ``labelfix predict`` reproduces it.
EVAL_CROP_MODE = "squash"

_HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a head under ``name``. A head class is built as
    ``cls(in_features, num_classes, **head_kwargs)`` and has a class attribute
    ``feature_map`` (True: consumes the unpooled feature map, False: pooled features);
    ``output_bias`` (the float (K,) bias added to its logits) lets ``--prior-bias`` start
    it at the class frequencies (:mod:`labelfix.models.prior`)."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        _HEADS[name] = cls
        return cls

    return deco


register_head("linear")(LinearHead)
register_head("q2l")(Query2LabelHead)
register_head("mldecoder")(MLDecoderHead)


def list_heads() -> list[str]:
    """Names accepted by ``create_model(head=...)``."""
    return sorted(_HEADS)


class MultiLabelModel(nn.Module):
    """``head(backbone(x))`` with the construction arguments kept for checkpoints.

    ``forward(x)``: x float (B, 3, H, W), any memory format -> logits float (B, K).
    Feature maps in NHWC layout (timm models with ``output_fmt == "NHWC"``) are
    permuted to NCHW before the head. ``weights_report``: the :class:`WeightsReport` of
    the ``weights=FILE`` that ``create_model`` loaded, else None; ``head_from_weights``:
    whether that file's head was loaded too (same head and classes).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = dict(config)
        self.weights_report: WeightsReport | None = None
        self.head_from_weights = False   # load_weights loaded the head too
        self._nhwc = bool(getattr(head, "feature_map", False)) and (
            getattr(backbone, "output_fmt", "NCHW") == "NHWC"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output: pooled (B, C), map (B, C, h, w) or tokens (B, L, C)."""
        f = self.backbone(x)
        if self._nhwc and f.dim() == 4:
            f = f.permute(0, 3, 1, 2)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def check_backbone_name(name: str, where: str = "backbone") -> None:
    """Raise ``LabelfixError`` naming ``where`` (an option, or a config file and its key)
    unless ``name`` is a model timm can create."""
    import timm

    if not timm.is_model(name):
        raise LabelfixError(f"{where} '{name}': unknown timm model (see timm.list_models())")


def _create_backbone(name: str, *, feature_map: bool, pretrained: bool, img_size: int) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg_value

    check_backbone_name(name)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if feature_map:
        kwargs["global_pool"] = ""
    if get_pretrained_cfg_value(name, "fixed_input_size"):
        kwargs["img_size"] = img_size  # ViT-style models size their position embedding
    if pretrained:
        _check_hub_weights(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as err:  # the hub download: no connection, offline mode, HTTP errors
        if not pretrained:
            raise
        raise _no_hub_weights(name, err) from err
    except (RuntimeError, KeyError, ValueError) as err:
        raise LabelfixError(f"backbone '{name}': cannot build it: {_first_line(err)}") from err


def _check_hub_weights(name: str) -> None:
    """Fail fast before timm's hub download, whose retries take ~45 s without network:
    raise when the Hugging Face Hub weights of ``name`` are neither cached nor reachable
    (one HEAD request; ``HF_HUB_OFFLINE=1`` refuses it at once)."""
    from huggingface_hub import constants, get_session, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return  # no weights (timm says so) or a plain URL (torch.hub fails fast itself)
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    if any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files):
        return
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as err:  # httpx transport errors, OfflineModeIsEnabled
        raise _no_hub_weights(name, err) from err


def _no_hub_weights(name: str, err: BaseException) -> LabelfixError:
    return LabelfixError(
        f"--pretrained: cannot get timm's hub weights for '{name}' ({_first_line(err)}); without network "
        "give a local file with --weights FILE, or start from random weights with --no-pretrained")


def load_weights(model: MultiLabelModel, path: str | Path, *,
                 state_dict: dict[str, torch.Tensor] | None = None) -> WeightsReport:
    """Load a full labelfix model state dict (``backbone.*`` keys) from ``path`` into
    ``model``: the backbone completely (:func:`load_backbone_weights`), the head only when
    every shape matches. ``state_dict``: the file's tensors when already read.
    Returns the backbone's :class:`WeightsReport`."""
    sd = read_state_dict(path) if state_dict is None else state_dict
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    head = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
    report = load_backbone_weights(model.backbone, path, state_dict=backbone)
    own = model.head.state_dict()
    if head.keys() == own.keys() and all(head[k].shape == own[k].shape for k in own):
        model.head.load_state_dict(head, strict=True)
        model.head_from_weights = True
    else:
        _logger.info("%s: head weights not loaded (different head or classes); head is freshly initialised", path)
    return report


def create_model(
    backbone: str,
    head: str = "linear",
    *,
    num_classes: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    img_size: int = 224,
    **head_kwargs: Any,
) -> MultiLabelModel:
    """Build ``MultiLabelModel(timm backbone, registered head)``.

    Args:
        backbone: timm model name (``timm.list_models()``).
        head: one of ``list_heads()``.
        num_classes: K >= 1.
        pretrained: load timm's hub weights for the backbone (needs network).
        weights: offline weights file; see the module docstring. Exclusive with
            ``pretrained``. What it gave is ``model.weights_report`` (also logged).
        img_size: training/inference input size S (passed to fixed-size backbones such
            as ViTs; recorded in ``model_config``).
        **head_kwargs: the head's own options (see each head class).
    """
    if head not in _HEADS:
        raise LabelfixError(f"head '{head}': unknown head (choose from {', '.join(list_heads())})")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LabelfixError(f"num_classes: must be a positive integer, got {num_classes!r}")
    if pretrained and weights is not None:
        raise LabelfixError("--pretrained and --weights: give one of them, not both")
    head_cls = _HEADS[head]
    sd = None if weights is None else read_state_dict(weights)
    bb = _create_backbone(backbone, feature_map=head_cls.feature_map, pretrained=pretrained, img_size=img_size)
    in_features = int(bb.num_features)
    try:
        head_module = head_cls(in_features, num_classes, **head_kwargs)
    except (TypeError, ValueError) as err:
        raise LabelfixError(f"head '{head}': bad head options {head_kwargs}: {_first_line(err)}") from err
    config = {
        "backbone": backbone, "head": head, "num_classes": num_classes,
        "img_size": int(img_size), "head_kwargs": dict(head_kwargs),
    }
    model = MultiLabelModel(bb, head_module, config)
    if sd is not None:
        full = any(k.startswith("backbone.") for k in sd)
        model.weights_report = (load_weights(model, weights, state_dict=sd) if full
                                else load_backbone_weights(bb, weights, state_dict=sd))
        _logger.info("weights: %s", model.weights_report)
    return model


def model_config(model: MultiLabelModel) -> dict[str, Any]:
    """The checkpoint's ``"model_config"``: backbone, head, num_classes, img_size,
    mean, std (from timm's data config of the backbone), head_kwargs, plus the
    evaluation resize: ``interpolation`` (timm's data config) and ``crop_mode``
    (:data:`EVAL_CROP_MODE`). Plain Python types only (loads with ``weights_only``)."""
    from timm.data import resolve_data_config

    if not isinstance(model, MultiLabelModel):
        raise TypeError(f"model_config needs a MultiLabelModel, got {type(model).__name__}")
    data = resolve_data_config({}, model=model.backbone)
    cfg = dict(model.config)
    cfg["head_kwargs"] = dict(cfg["head_kwargs"])
    cfg["mean"] = [float(v) for v in data["mean"]]
    cfg["std"] = [float(v) for v in data["std"]]
    cfg["interpolation"] = str(data.get("interpolation", "bilinear"))
    cfg["crop_mode"] = EVAL_CROP_MODE
    return cfg


_REQUIRED_CONFIG = ("backbone", "head", "num_classes", "img_size")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a labelfix checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Raises ``LabelfixError`` for a missing, corrupt or foreign file (anything that is
    not a dict with ``"model"`` and a complete ``"model_config"``).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelfixError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip errors, unpickling refused, truncated file
        raise LabelfixError(f"{path}: not a readable labelfix checkpoint ({_first_line(err)})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("model_config"), dict):
        raise LabelfixError(f"{path}: not a labelfix checkpoint (needs keys 'model' and 'model_config')")
    missing = [k for k in _REQUIRED_CONFIG if k not in ckpt["model_config"]]
    if missing:
        raise LabelfixError(f"{path}: model_config: missing {', '.join(missing)}")
    return ckpt


class EnsembleModel(nn.Module):
    """The mean of the logits of several models with the same inputs and classes (the
    fold models of a cross-fitted run). ``forward(x)``: (B, 3, H, W) -> (B, K)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def model_from_checkpoint(ckpt: dict[str, Any], ema: bool = False) -> nn.Module:
    """Rebuild the model of a checkpoint dict (``load_checkpoint``) with its weights
    (``ckpt["ema"]`` when ``ema``), in eval mode on the CPU: a :class:`MultiLabelModel`,
    or an :class:`EnsembleModel` when ``model_config["ensemble"]`` gives a member count."""
    cfg = ckpt["model_config"]

    def build():
        return create_model(cfg["backbone"], cfg["head"], num_classes=int(cfg["num_classes"]),
                            img_size=int(cfg["img_size"]), **dict(cfg.get("head_kwargs") or {}))

    count = int(cfg.get("ensemble") or 0)
    model = EnsembleModel([build() for _ in range(count)]) if count else build()
    sd = ckpt.get("ema") if ema else ckpt.get("model")
    if sd is None:
        raise LabelfixError("checkpoint: ema: this run kept no EMA weights (drop --ema)")
    try:
        model.load_state_dict(strip_prefixes(dict(sd)), strict=True)
    except RuntimeError as err:
        raise LabelfixError(
            f"checkpoint: {'ema' if ema else 'model'}: weights do not match the model_config: {_first_line(err)}"
        ) from err
    return model.eval()
