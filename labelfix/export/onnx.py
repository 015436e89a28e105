"""Export a trained model to ONNX, with metadata that ``labelfix predict`` reads.

The graph has one input ``input`` float32 (batch, 3, S, S) (normalised image, NCHW)
and one output ``logits`` float32 (batch, K); the batch axis is dynamic. With
``fp16=True`` the weights and arithmetic are float16 and the input/output stay float32
(casts at both ends). See docs/onnx.md for the metadata keys and tolerances.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from labelfix.errors import LabelfixError, first_line
from labelfix.io.atomic import atomic_path

__all__ = ["export_onnx", "export_run", "read_class_names", "labelfix_version",
           "FP32_TOLERANCE", "FP16_RELATIVE_TOLERANCE", "MIN_OPSET"]

_logger = logging.getLogger(__name__)

#: max |logit difference| allowed between onnxruntime and torch for a float32 export.
FP32_TOLERANCE = 1e-4
#: fp16 exports are compared with the float32 torch model; allowed max |difference| is
#: ``FP16_RELATIVE_TOLERANCE * max(1, max |reference logit|)``.
FP16_RELATIVE_TOLERANCE = 2e-2
#: the product contract: opset 18 or later.
MIN_OPSET = 18

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def labelfix_version() -> str:
    """The installed labelfix version (package metadata, else ``labelfix.__version__``)."""
    from importlib import metadata

    try:
        return metadata.version("labelfix")
    except metadata.PackageNotFoundError:
        import labelfix

        return str(getattr(labelfix, "__version__", "unknown"))


class _Fp16IO(nn.Module):
    """Run a float16 model behind float32 input/output (casts inside the graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float16)).to(torch.float32)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter's optimiser logs one line per skipped constant fold."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(module: nn.Module, example: torch.Tensor, opset: int):
    """``torch.onnx.export(dynamo=True)`` with a dynamic batch -> onnx.ModelProto."""
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
        )
    return program.model_proto


def _export_torchscript(module: nn.Module, example: torch.Tensor, opset: int):
    """The TorchScript exporter (``dynamo=False``) -> onnx.ModelProto."""
    import onnx

    buf = io.BytesIO()
    with _quiet_exporter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the legacy exporter
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


def check_opset(opset) -> int:
    """``opset`` must be an integer from :data:`MIN_OPSET` to the newest opset the
    installed onnx knows (never lowered silently)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise LabelfixError(f"--opset: {opset}: must be an integer from {MIN_OPSET} to {newest} (the newest opset "
                            f"the installed onnx {onnx.__version__} knows)")
    return opset


def _default_opset(proto) -> int | None:
    """The version of the default ONNX domain the graph imports."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _has_dynamic_batch(proto) -> bool:
    dims = [v.type.tensor_type.shape.dim for v in (proto.graph.input[0], proto.graph.output[0])]
    return all(d[0].HasField("dim_param") for d in dims)


def _export_proto(module: nn.Module, example: torch.Tensor, opset: int):
    """Dynamo exporter first; the TorchScript exporter if it fails (logged)."""
    try:
        proto = _export_dynamo(module, example, opset)
        if not _has_dynamic_batch(proto):
            raise RuntimeError("the exported batch axis is not dynamic")
        return proto, "dynamo"
    except Exception as err:  # exporter failures are many and version dependent
        _logger.warning(
            "ONNX: the dynamo exporter failed (%s: %s); using the TorchScript exporter",
            type(err).__name__, first_line(err),
        )
    proto = _export_torchscript(module, example, opset)
    if not _has_dynamic_batch(proto):
        raise LabelfixError("ONNX export: the exported graph has no dynamic batch axis")
    return proto, "torchscript"


def _check_against_torch(model_path: Path, reference: nn.Module, inputs: list[np.ndarray],
                         tolerance: float | None) -> float:
    """Run onnxruntime (CPU) and ``reference`` on each input (N, 3, S, S) float32;
    return the largest max |logit difference|; raise LabelfixError above tolerance.
    ``tolerance=None`` means the fp16 rule (relative to the logit scale)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            ref = reference(torch.from_numpy(x)).float().numpy()
        if got.shape != ref.shape:
            raise LabelfixError(f"ONNX self-check: output shape {got.shape} != torch {ref.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
        tol = tolerance if tolerance is not None else (
            FP16_RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(ref)))))
        if not np.isfinite(diff) or diff > tol:
            raise LabelfixError(
                f"ONNX self-check: onnxruntime and torch logits differ by {diff:.3g} "
                f"(allowed {tol:.3g}) on a batch of {x.shape[0]}"
            )
        worst = max(worst, diff)
    return worst


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    class_names: Sequence[str],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    threshold: float = 0.5,
    opset: int = 18,
    fp16: bool = False,
    check: bool = True,
    check_inputs: np.ndarray | torch.Tensor | None = None,
    interpolation: str = "bilinear",
    crop_mode: str = "squash",
) -> Path:
    """Export ``model`` (images (B, 3, S, S) -> logits (B, K)) to ``path`` atomically.

    Args:
        class_names: K names, stored as JSON in the metadata (column order of the logits).
        img_size: S, the square input size of the graph.
        mean, std: the 3-channel normalisation the model was trained with.
        threshold: default decision threshold on sigmoid probabilities for ``predict``.
        opset: ONNX opset, at least 18.
        fp16: float16 weights and arithmetic (float32 input/output).
        check: compare onnxruntime with torch on random inputs (batches of 1 and 3) and
            on ``check_inputs`` (N, 3, S, S) if given; the file is only written when
            the max |logit difference| is within ``FP32_TOLERANCE`` (fp16: see
            ``FP16_RELATIVE_TOLERANCE``), else ``LabelfixError``.
        interpolation, crop_mode: the evaluation resize (``"bilinear"``/``"bicubic"``,
            ``"squash"``/``"center"``), recorded for ``predict``.

    The model itself is not modified (a copy is exported on the CPU in eval mode).
    Returns ``Path(path)``.
    """
    import onnx

    path = Path(path)
    names = [str(c) for c in class_names]
    from labelfix.validation import check_class_names

    check_class_names(names, "class names", record=lambda i: f"name {i}")
    check_opset(opset)
    if not 0.0 < float(threshold) < 1.0:
        raise LabelfixError(f"--threshold: {threshold}: must be in (0, 1)")
    if int(img_size) < 1:
        raise LabelfixError(f"--img-size: {img_size}: must be positive")
    if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
        raise LabelfixError(f"model_config: mean/std: need 3 values each (std > 0), got {mean}, {std}")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise LabelfixError(f"interpolation: '{interpolation}': not supported by predict")
    if crop_mode not in ("squash", "center"):
        raise LabelfixError(f"crop_mode: '{crop_mode}': must be 'squash' or 'center'")
    size = int(img_size)
    real = None
    if check_inputs is not None:
        real = check_inputs.detach().cpu().numpy() if isinstance(check_inputs, torch.Tensor) else np.asarray(check_inputs)
        if real.ndim != 4 or real.shape[1:] != (3, size, size):
            raise LabelfixError(f"check inputs: shape {real.shape}: expected (N, 3, {size}, {size})")

    reference = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    rng = np.random.default_rng(0)
    example = torch.from_numpy(rng.standard_normal((2, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        k = reference(example).shape[-1]
    if k != len(names):
        raise LabelfixError(f"class names: {len(names)} names for a model with {k} outputs")
    module: nn.Module = _Fp16IO(copy.deepcopy(reference).half()).eval() if fp16 else reference

    with torch.no_grad():
        proto, exporter = _export_proto(module, example, opset)
    written = _default_opset(proto)
    if written != opset:
        raise LabelfixError(f"--opset: {opset}: the {exporter} exporter produced opset {written} instead; "
                            f"choose an opset it supports (e.g. {written})")
    meta = {
        "class_names": json.dumps(names, ensure_ascii=False),
        "img_size": str(size),
        "input_size": json.dumps([3, size, size]),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "threshold": repr(float(threshold)),
        "interpolation": interpolation,
        "crop_mode": crop_mode,
        "precision": "fp16" if fp16 else "fp32",
        "labelfix_version": labelfix_version(),
    }
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "labelfix"

    inputs = [rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in (1, 3)]
    if real is not None:
        inputs.append(np.ascontiguousarray(real, dtype=np.float32))

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        if check:
            diff = _check_against_torch(tmp, reference, inputs, None if fp16 else FP32_TOLERANCE)
            _logger.info("ONNX (%s exporter, opset %d): max |logit diff| vs torch %.3g", exporter, opset, diff)
    return path


def read_class_names(path: str | Path) -> list[str]:
    """Class names, in column order, from a run's ``classes.json``.

    Accepts a list of names, a list of records with ``"name"``, or a pandas
    column-oriented object ``{"name": [...] or {"0": ..., ...}, ...}``.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelfixError(f"{path}: not found (is this a labelfix run directory?)") from None
    except (OSError, ValueError) as err:
        raise LabelfixError(f"{path}: not valid JSON ({err})") from err
    names: Any = None
    if isinstance(obj, dict) and "classes" in obj:
        obj = obj["classes"]
    if isinstance(obj, list) and all(isinstance(c, str) for c in obj):
        names = obj
    elif isinstance(obj, list) and all(isinstance(c, dict) and "name" in c for c in obj):
        names = [c["name"] for c in obj]
    elif isinstance(obj, dict) and "name" in obj:
        col = obj["name"]
        if isinstance(col, list):
            names = col
        elif isinstance(col, dict):
            names = [col[k] for k in sorted(col, key=int)]
    if not names:
        raise LabelfixError(f"{path}: no class names found")
    from labelfix.validation import check_class_names

    check_class_names(names, str(path), record=lambda i: f"record {i}")
    return [str(n) for n in names]


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    which: str = "best",
    ema: bool = False,
    opset: int = 18,
    img_size: int | None = None,
    fp16: bool = False,
    check: bool = True,
    threshold: float = 0.5,
) -> Path:
    """Export ``RUN/checkpoints/<which>.pt`` (``ema``: its EMA weights) to ``out``.

    Class names come from ``RUN/classes.json``; image size (unless ``img_size`` is
    given), normalisation and evaluation resize from the checkpoint's model_config.
    """
    from labelfix.io.outputs import check_outputs
    from labelfix.models import load_checkpoint, model_from_checkpoint

    run = Path(run_dir)
    check_outputs({"--out": out}, [run], runs=[run])
    check_opset(opset)
    if which not in ("best", "last"):
        raise LabelfixError(f"--checkpoint: '{which}': must be 'best' or 'last'")
    if not run.is_dir():
        raise LabelfixError(f"{run}: run directory not found")
    ckpt = load_checkpoint(run / "checkpoints" / f"{which}.pt")
    names = read_class_names(run / "classes.json")
    stored = ckpt.get("classes")
    if stored is not None and [str(c) for c in stored] != names:
        raise LabelfixError(
            f"{run / 'classes.json'}: class names differ from those in checkpoints/{which}.pt"
        )
    cfg = ckpt["model_config"]
    if "mean" not in cfg or "std" not in cfg:
        raise LabelfixError(f"{run / 'checkpoints' / f'{which}.pt'}: model_config: missing mean/std")
    if ema and ckpt.get("ema") is None:
        raise LabelfixError(f"{run / 'checkpoints' / f'{which}.pt'}: --ema: this run was trained without EMA "
                            f"weights (train --ema keeps them); export without --ema")
    model = model_from_checkpoint(ckpt, ema=ema)
    return export_onnx(
        model, out, class_names=names, img_size=int(img_size or cfg["img_size"]),
        mean=cfg["mean"], std=cfg["std"], threshold=threshold, opset=opset, fp16=fp16,
        check=check, interpolation=cfg.get("interpolation", "bilinear"),
        crop_mode=cfg.get("crop_mode", "squash"),
    )
