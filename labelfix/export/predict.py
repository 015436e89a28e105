"""Multi-label inference with onnxruntime on a model written by ``labelfix export onnx``.

Torch-free by contract: nothing on this module's import path may import torch or timm
(``tests/test_onnx.py`` runs it with ``import torch`` made to fail). It reads the
model's metadata (class names, input size, normalisation, evaluation resize,
threshold), decodes images with the decoder training uses
(:func:`labelfix.data.image.load_rgb`: EXIF orientation, 16-bit scaling, transparency
composited onto the same background), preprocesses them exactly as timm's evaluation
transform does, runs batches and returns one row per image.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from labelfix.data.image import image_problem, load_rgb, open_image_file
from labelfix.errors import LabelfixError, first_line
from labelfix.numeric import sigmoid

__all__ = ["ModelInfo", "open_session", "load_image", "preprocess", "collect_images",
           "sigmoid", "predict", "IMAGE_EXTENSIONS"]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class ModelInfo:
    """What ``labelfix export onnx`` stores in the model's ``metadata_props``."""

    class_names: list[str]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float
    interpolation: str
    crop_mode: str
    labelfix_version: str

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> "ModelInfo":
        """Read and check the metadata: class names a list of unique non-empty strings;
        img_size a positive integer; mean / std three finite numbers (std > 0);
        threshold a number in [0, 1]. One line naming the model and the key otherwise."""
        from labelfix.validation import check_class_names, check_number

        missing = [k for k in ("class_names", "img_size", "mean", "std") if k not in meta]
        if missing:
            raise LabelfixError(
                f"{source}: metadata: missing {', '.join(missing)} (not written by labelfix export onnx)"
            )

        def parsed(key: str):
            try:
                return json.loads(meta[key])
            except (ValueError, TypeError) as err:
                raise LabelfixError(f"{source}: metadata: {key}: not valid JSON ({err})") from None

        names = parsed("class_names")
        if not isinstance(names, list) or not names:
            raise LabelfixError(f"{source}: metadata: class_names: expected a non-empty JSON list of names")
        check_class_names(names, f"{source}: metadata: class_names", record=lambda i: f"entry {i}")
        vectors = {}
        for key in ("mean", "std"):
            v = parsed(key)
            if not isinstance(v, list) or len(v) != 3:
                raise LabelfixError(f"{source}: metadata: {key}: expected a list of 3 numbers, got {meta[key]!r}")
            vectors[key] = tuple(check_number(x, f"{source}: metadata: {key}") for x in v)
        if any(s <= 0 for s in vectors["std"]):
            raise LabelfixError(f"{source}: metadata: std: {vectors['std']}: every value must be > 0")
        try:
            size = int(meta["img_size"])
            threshold = float(meta.get("threshold", 0.5))
        except (ValueError, TypeError) as err:
            raise LabelfixError(f"{source}: metadata: unreadable value ({err})") from None
        check_number(size, f"{source}: metadata: img_size", integer=True, low=1)
        check_number(threshold, f"{source}: metadata: threshold", low=0.0, high=1.0)
        return cls(
            class_names=[str(c) for c in names],
            img_size=size,
            mean=vectors["mean"],
            std=vectors["std"],
            threshold=threshold,
            interpolation=meta.get("interpolation", "bilinear"),
            crop_mode=meta.get("crop_mode", "squash"),
            labelfix_version=meta.get("labelfix_version", "unknown"),
        )


def open_session(model_path: str | os.PathLike, providers: Sequence[str] | None = None):
    """An onnxruntime session (CUDA when available, else CPU) and the model's ModelInfo."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise LabelfixError(f"{path}: model file not found")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), providers=list(providers))
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        raise LabelfixError(f"{path}: not a readable ONNX model ({first_line(err)})") from err
    info = ModelInfo.from_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))
    if info.interpolation not in _INTERPOLATION or info.crop_mode not in ("squash", "center"):
        raise LabelfixError(f"{path}: metadata: unknown resize {info.interpolation}/{info.crop_mode}")
    shape = session.get_inputs()[0].shape   # (batch, 3, S, S); labelfix exports a static S
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) and tuple(shape[2:]) != (info.img_size,) * 2:
        raise LabelfixError(f"{path}: metadata: img_size {info.img_size} does not match the model's input "
                            f"{shape[2]} x {shape[3]}")
    outputs = session.get_outputs()
    k = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(k, int) and k != len(info.class_names):
        raise LabelfixError(f"{path}: metadata: class_names has {len(info.class_names)} names for a model with "
                            f"{k} outputs")
    return session, info


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image as 8-bit RGB exactly as training does: this is
    :func:`labelfix.data.image.load_rgb` (EXIF orientation; 16-bit scaled to 8 bits;
    transparent pixels composited onto black; regular files only)."""
    return load_rgb(path)


def preprocess(
    img: Image.Image, *, img_size: int, mean: Sequence[float], std: Sequence[float],
    interpolation: str = "bilinear", crop_mode: str = "squash",
) -> np.ndarray:
    """RGB PIL image -> float32 (3, S, S), the numerics of timm's
    ``create_transform(input_size=S, is_training=False, crop_pct=1.0, crop_mode=...,
    interpolation=..., mean=..., std=...)``.

    ``squash``: resize to (S, S). ``center``: resize the shorter side to S (the longer
    to ``int(S * long / short)``), then a centred S x S crop (torchvision's rounding).
    Then ``x / 255``, ``(x - mean) / std`` per channel, all in float32.
    """
    resample = _INTERPOLATION[interpolation]
    s = int(img_size)
    w, h = img.size
    if crop_mode == "squash":
        if (w, h) != (s, s):
            img = img.resize((s, s), resample)
    elif crop_mode == "center":
        if w <= h:
            size = (s, int(s * h / w))
        else:
            size = (int(s * w / h), s)
        if size != (w, h):
            img = img.resize(size, resample)
        w, h = img.size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        img = img.crop((left, top, left + s, top + s))
    else:
        raise ValueError(f"crop_mode must be 'squash' or 'center', got {crop_mode!r}")
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


#: the ``skipped`` reason of a file reached twice by :func:`collect_images`
LISTED_TWICE = "listed twice: predicted once"
#: the ``skipped`` reason of a file inside a given folder whose name does not end in one
#: of :data:`IMAGE_EXTENSIONS` (a file named directly is read whatever its extension)
OTHER_EXTENSION = "not an image file name (extension); name the file to predict it"


def collect_images(paths: Iterable[str | os.PathLike], skipped: list | None = None) -> list[Path]:
    """Files as given, plus every image (by extension, see ``IMAGE_EXTENSIONS``) under
    the given folders, recursively and sorted. Missing paths raise LabelfixError; a path
    given that is not a regular file (a FIFO, a device) too. Inside a folder, entries
    that are not regular files, and symbolic links whose target lies outside the folder,
    are left out; ``skipped`` (a list) receives ``(file, reason)`` for each, and
    :data:`OTHER_EXTENSION` for the folder's other files. A file reached twice (given
    twice, or given and inside a given folder) is kept once, where it first came, and the
    repeat goes to ``skipped`` (:data:`LISTED_TWICE`)."""
    out: list[Path] = []
    seen: set[str] = set()

    def add(q: Path) -> None:
        key = os.path.realpath(q)
        if key in seen:
            if skipped is not None:
                skipped.append((str(q), LISTED_TWICE))
            return
        seen.add(key)
        out.append(q)

    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*") if not q.is_dir()):
                if q.suffix.lower() not in IMAGE_EXTENSIONS:
                    if skipped is not None:
                        skipped.append((str(q), OTHER_EXTENSION))
                    continue
                try:
                    open_image_file(q, root=p).close()
                except OSError as err:
                    if skipped is not None:
                        skipped.append((str(q), err.strerror or str(err)))
                    continue
                add(q)
        elif p.is_file():
            add(p)
        elif p.exists():
            raise LabelfixError(f"{p}: not a regular file (a FIFO, socket or device); give image files or folders")
        elif p.is_symlink():   # exists() follows the link: a loop (the decoder's check says so) or a dangling link
            why = image_problem(p)
            raise LabelfixError(f"{p}: " + (f"a symbolic link to {os.path.realpath(p)}, which does not exist"
                                             if why == "missing" else why))
        else:
            raise LabelfixError(f"{p}: no such file or directory")
    return out


def _load_one(path: Path, info: ModelInfo) -> np.ndarray | str:
    """Preprocessed image, or the reason it could not be read."""
    try:
        img = load_image(path)
        return preprocess(img, img_size=info.img_size, mean=info.mean, std=info.std,
                          interpolation=info.interpolation, crop_mode=info.crop_mode)
    except Exception as err:  # decoders raise many types for corrupt or foreign files
        return f"{type(err).__name__}: {err}"


def text_name(path) -> str:
    """``str(path)``, or where the file name is not UTF-8 (an old archive's Latin-1 name,
    kept by Python as surrogate escapes that no text file can hold) the same name with
    ``\\xNN`` for each byte that is not UTF-8: a CSV, parquet or terminal line can hold it,
    and it still tells the file apart."""
    name = str(path)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        try:
            return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:   # a lone surrogate that is no escaped byte
            return name.encode("utf-8", "backslashreplace").decode("utf-8")


def escaped_note(escaped: list[str]) -> str:
    """The line that counts the file names written with escapes (:func:`text_name`)."""
    return (f"{len(escaped)} file name(s) are not UTF-8 text: written with \\xNN for the bytes that are not "
            f"(first: {escaped[0]})")


def predict(
    model_path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    threshold: float | None = None,
    num_workers: int = 4,
    progress: bool = True,
    providers: Sequence[str] | None = None,
    warn: bool = True,
) -> pd.DataFrame:
    """Predict labels for image files with an exported labelfix ONNX model.

    Args:
        model_path: ``.onnx`` file from ``labelfix export onnx``.
        images: image file paths (use ``collect_images`` to expand folders).
        batch_size: images per onnxruntime call.
        threshold: decision threshold on probabilities (default: the model's metadata).
        num_workers: threads decoding and resizing images while the model runs.
        progress: show a progress bar on stderr.
        providers: onnxruntime providers (default: CUDA when available, else CPU).
        warn: log a warning with the count of unreadable images (the CLI says it itself).

    Returns:
        DataFrame, one row per readable image, in input order: ``file`` (str, as
        given; a name that is not UTF-8 with ``\\xNN`` escapes, :func:`text_name`, listed in
        ``df.attrs["escaped"]``), ``labels`` (names with probability >= threshold, joined with ``;``),
        then one float32 probability column per class (sigmoid of the logit), named
        by the class. Unreadable images are skipped with a warning;
        ``df.attrs["skipped"]`` lists ``(file, reason)`` pairs.
    """
    if batch_size < 1:
        raise LabelfixError(f"--batch-size: {batch_size}: must be at least 1")
    session, info = open_session(model_path, providers)
    thr = info.threshold if threshold is None else float(threshold)
    if not 0.0 <= thr <= 1.0:
        raise LabelfixError(f"--threshold: {thr}: must be in [0, 1]")
    clash = {"file", "labels"} & set(info.class_names)
    if clash:
        raise LabelfixError(f"{model_path}: class names {sorted(clash)} clash with the output columns")
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    files = [Path(p) for p in images]
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    kept: list[str] = []
    escaped: list[str] = []   # names that are not UTF-8, written with \xNN escapes (text_name)
    probs: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.console import Console

    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress, transient=False)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool, bar:
        task = bar.add_task("predict", total=len(files))

        def submit(batch: list[Path]) -> list[Future]:
            return [pool.submit(_load_one, f, info) for f in batch]

        pending = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            results = [f.result() for f in pending]
            pending = submit(batches[i + 1]) if i + 1 < len(batches) else []  # decode ahead
            arrays = []
            for f, r in zip(batch, results):
                if isinstance(r, str):
                    skipped.append((text_name(f), r))
                else:
                    kept.append(text_name(f))
                    if kept[-1] != str(f):
                        escaped.append(kept[-1])
                    arrays.append(r)
            if arrays:
                try:
                    logits = session.run(None, {inp.name: np.stack(arrays).astype(dtype, copy=False)})[0]
                except Exception as err:   # onnxruntime's own types: one line, not a traceback
                    raise LabelfixError(f"{model_path}: onnxruntime could not run the model "
                                        f"({first_line(err)})") from err
                probs.append(sigmoid(logits.astype(np.float32)))
            bar.update(task, advance=len(batch))

    k = len(info.class_names)
    p = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
    names = np.asarray(info.class_names, dtype=object)
    labels = [";".join(names[row >= thr]) for row in p]
    df = pd.concat(
        [pd.DataFrame({"file": kept, "labels": labels}),
         pd.DataFrame(p.astype(np.float32), columns=info.class_names)],
        axis=1,
    )
    df.attrs["skipped"] = skipped
    df.attrs["threshold"] = thr
    df.attrs["escaped"] = escaped
    if escaped and warn:
        _logger.warning(escaped_note(escaped))
    if skipped and warn:
        _logger.warning("skipped %d unreadable image(s), first: %s (%s)", len(skipped), *skipped[0])
    return df
