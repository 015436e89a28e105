"""Input validation in one place (the model is cleanlab's internal validation module).

Every check raises :class:`labelfix.errors.LabelfixError` with one line naming where the
value came from (``"train: --lr"``, ``"cfg.yaml: lr"``, ``"RUN/corrections.csv: row 7"``)
and what is wrong. Nothing here imports torch (a device check imports it only for a
device other than the CPU), so the readers, ``predict`` and ``find_label_issues`` on
numpy arrays can use it.

Sections:
- numbers and types: :func:`check_number`, :func:`check_type`, the option rules of
  ``labelfix train`` (:data:`TRAIN_RULES`) and :func:`check_train_values`;
- devices: :func:`check_device`;
- class names: :func:`check_class_names`;
- ``find_label_issues`` inputs: :func:`as_given`, :func:`as_cell_array`,
  :func:`check_probabilities`;
- run-directory tables: :func:`read_run_csv`, :func:`check_corrections`,
  :func:`check_decisions`.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from labelfix.errors import LabelfixError, first_line
from labelfix.labels import UNK, first_invalid_cell

# =========================================================================== numbers


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def check_number(value: Any, where: str, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 none_ok: bool = False, why: str | None = None) -> Any:
    """Return ``value`` (an int, or a float for ``integer=False``) or raise LabelfixError.

    Refused: bools (YAML ``true`` is not a number), strings and other types, NaN and
    +-inf, and values outside ``[low, high]`` (open ends with ``low_open`` /
    ``high_open``). ``none_ok``: None passes (an option that is off / defaulted). ``why``
    is appended to the range message (e.g. why a batch needs 2 images).
    """
    if value is None and none_ok:
        return None
    kind = "an integer" if integer else "a number"
    if integer and not _is_int(value):   # 2.0 from a YAML file is not an epoch count either
        raise LabelfixError(f"{where}: {value!r} is not {kind}")
    if not integer and not _is_real(value):
        raise LabelfixError(f"{where}: {value!r} is not {kind}")
    if not integer:
        value = float(value)
        if not math.isfinite(value):
            raise LabelfixError(f"{where}: {value} is not a finite number")
    else:
        value = int(value)
    ok = True
    if low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        rng = _range_text(low, high, low_open, high_open)
        verb = "is not" if low is not None and high is not None else "must be"
        raise LabelfixError(f"{where}: {value:g} {verb} {rng}" + (f" ({why})" if why else ""))
    return value


#: the largest input size of train / export onnx (pixels per side): beyond it one image is
#: hundreds of MB and a batch takes the machine down (4000000 asked numpy for 349 TiB)
MAX_IMG_SIZE = 4096


@dataclass(frozen=True)
class Rule:
    """The allowed values of one numeric option."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False
    why: str | None = None

    def check(self, value: Any, where: str) -> Any:
        return check_number(value, where, integer=self.integer, low=self.low, high=self.high,
                            low_open=self.low_open, high_open=self.high_open, none_ok=self.none_ok, why=self.why)

    def describe(self) -> str:
        return ("integer " if self.integer else "number ") + _range_text(self.low, self.high, self.low_open,
                                                                         self.high_open)


#: the numeric options of ``labelfix train`` / ``TrainConfig`` and their ranges
TRAIN_RULES: dict[str, Rule] = {
    "val_split": Rule(low=0.0, high=1.0, high_open=True),
    "img_size": Rule(integer=True, low=1, high=MAX_IMG_SIZE),
    "epochs": Rule(integer=True, low=1),
    "batch_size": Rule(integer=True, low=2, why="BatchNorm layers need at least 2 images per batch in training"),
    "lr": Rule(low=0.0, low_open=True),
    "weight_decay": Rule(low=0.0),
    "momentum": Rule(low=0.0, high=1.0, high_open=True),
    "warmup_epochs": Rule(low=0.0),
    "warmup_lr_ratio": Rule(low=0.0, high=1.0, low_open=True),
    "min_lr_ratio": Rule(low=0.0, high=1.0, low_open=True),
    "accum_steps": Rule(integer=True, low=1),
    "clip_grad": Rule(low=0.0, low_open=True, none_ok=True),
    "ema_decay": Rule(low=0.0, high=1.0, low_open=True, high_open=True),
    "folds": Rule(integer=True, low=0),
    "rounds": Rule(integer=True, low=1, none_ok=True),
    "workers": Rule(integer=True, low=0, none_ok=True),
    "fold_workers": Rule(integer=True, low=1),
    "seed": Rule(integer=True, low=0, high=2**63 - 1),
    "hflip": Rule(low=0.0, high=1.0, none_ok=True),
    "mix_prob": Rule(low=0.0, high=1.0, none_ok=True),
    "mixup_alpha": Rule(low=0.0, low_open=True, none_ok=True),
    "icm_weight": Rule(low=0.0, none_ok=True),
    "curriculum_start": Rule(integer=True, low=1, none_ok=True),
    "balancemix_warmup": Rule(integer=True, low=1, none_ok=True),   # the first GMMs need one epoch's losses
    "balancemix_delta": Rule(low=0.5, high=1.0, high_open=True, none_ok=True),
    "balancemix_clean_threshold": Rule(low=0.0, high=1.0, low_open=True, high_open=True, none_ok=True),
}

#: the path options of ``TrainConfig`` (stored absolute or run-relative in config.yaml)
PATH_FIELDS = ("data", "out", "images", "val", "weights", "class_descriptions")


def check_type(value: Any, annotation: str, where: str) -> Any:
    """Check ``value`` against a dataclass field annotation written as a string
    (``"int"``, ``"float | None"``, ``"bool"``, ``"str"``, ``"dict[str, Any]"``, ``"list[str]"``); return it
    (``pathlib.Path`` values of ``str`` fields become ``str``)."""
    parts = [p.strip() for p in annotation.split("|")]
    if value is None:
        if "None" in parts:
            return None
        raise LabelfixError(f"{where}: a value is required (got nothing)")
    base = next(p for p in parts if p != "None")
    if base == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise LabelfixError(f"{where}: {value!r} is not true / false")
    if base == "str":
        import os

        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise LabelfixError(f"{where}: {value!r} is not a string")
        return value
    if base == "int":
        return check_number(value, where, integer=True)
    if base == "float":
        return check_number(value, where)
    if base.startswith("dict"):
        if not isinstance(value, dict):
            raise LabelfixError(f"{where}: {value!r} is not a mapping")
        return value
    if base == "list[str]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise LabelfixError(f"{where}: {value!r} is not a list of names")
        return list(value)
    return value


def check_train_values(values: dict[str, Any], where: Callable[[str], str], types: dict[str, str]) -> dict:
    """Type and range checks of ``labelfix train`` options in ``values`` (a config file's
    mapping, or a TrainConfig's fields); ``where(name)`` names an option in messages;
    ``types`` maps field names to their annotations. Returns the checked values."""
    out = dict(values)
    for name, value in values.items():
        if name in types:
            out[name] = check_type(value, types[name], where(name))
        if name in TRAIN_RULES and out[name] is not None:
            out[name] = TRAIN_RULES[name].check(out[name], where(name))
    return out


# =========================================================================== devices


def check_device(device: Any, where: str = "--device", allow_auto: bool = False) -> str:
    """``"cpu"`` (and ``"auto"`` with ``allow_auto``) pass without importing torch; any
    other value must be a torch device that exists on this machine (CUDA available, the
    index within ``torch.cuda.device_count()``); a ``torch.device`` is read as its name."""
    if type(device).__name__ == "device" and type(device).__module__ == "torch":
        device = str(device)
    if not isinstance(device, str) or not device.strip():
        raise LabelfixError(f"{where}: {device!r} is not a device name (cpu, cuda, cuda:1 ...)")
    if device == "cpu" or (allow_auto and device == "auto"):
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise LabelfixError(f"{where}: {device!r} is not a device ({first_line(err)}); "
                            f"use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LabelfixError(f"{where}: {device}: CUDA is not available on this machine "
                                f"(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LabelfixError(f"{where}: {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LabelfixError(f"{where}: {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise LabelfixError(f"{where}: {device}: unsupported device type {dev.type!r}; use cpu or cuda")
    return device


# =========================================================================== class names


def check_class_names(names: Sequence[Any], where: str, record: Callable[[int], str] | None = None) -> None:
    """Class names must be non-empty strings (not only blanks) and unique.

    ``where`` names the file; ``record(i)`` names record i (default ``"class i"``), so
    the message reads ``"<file>: <record>: duplicate class name 'cat' (also <record>)"``.
    """
    record = record or (lambda i: f"class {i}")
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise LabelfixError(f"{where}: {record(i)}: class name must be a non-empty string, got {name!r}")
        j = first.setdefault(name, i)
        if j != i:
            raise LabelfixError(f"{where}: {record(i)}: duplicate class name {name!r} (also {record(j)})")


# =========================================================================== find_label_issues inputs

_CHUNK_CELLS = 1 << 22


def _rows_per_chunk(k: int) -> int:
    return max(1, _CHUNK_CELLS // max(1, k))


def _as_array(value: Any, name: str) -> Any:
    """Lists, tuples, torch tensors and pandas objects -> numpy; arrays, memmaps and
    row-sliceable objects with a ``shape`` pass unchanged (no copy of large inputs)."""
    if value is None:
        return None
    if hasattr(value, "to_numpy") and hasattr(value, "columns"):  # pandas DataFrame
        return value.to_numpy()
    if hasattr(value, "to_numpy") and hasattr(value, "index"):     # pandas Series: a single column
        return value.to_numpy()[:, None]
    if hasattr(value, "detach") and hasattr(value, "numpy"):   # a torch tensor: any device, grad, bfloat16
        t = value.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError as err:
            raise LabelfixError(f"{name}: not a rectangular (N, K) table ({err})") from None
        return arr
    if not hasattr(value, "shape"):
        raise LabelfixError(f"{name}: expected an (N, K) array, got {type(value).__name__}")
    return value


def check_aligned(given: Any, others: dict[str, Any], axes: tuple[str, ...] = ("index", "columns")) -> None:
    """pandas tables are matched by label, not position: each DataFrame of ``others``
    (name -> value) must have ``given``'s row index and columns when ``given`` is a
    DataFrame too and both name them (the same rows in another order would be paired
    with the wrong labels); an axis left at pandas' default 0..n-1 on either side is
    positional. One line naming the argument; arrays are paired by position as always.
    ``axes``: the axes to match (``("index",)`` for per-image inputs such as embeddings)."""
    if not (hasattr(given, "columns") and hasattr(given, "index")):
        return
    import pandas as pd

    def positional(axis) -> bool:
        return isinstance(axis, pd.RangeIndex) and axis.start == 0 and axis.step == 1

    for name, value in others.items():
        if not (hasattr(value, "columns") and hasattr(value, "index")):
            continue
        for what in axes:
            mine, theirs = getattr(value, what), getattr(given, what)
            if not (positional(mine) or positional(theirs) or mine.equals(theirs)):
                where = "row index is" if what == "index" else "columns are"
                raise LabelfixError(f"{name}: its {where} not given's (DataFrames are paired by their labels, "
                                    f"not by position): pass {name}.reindex(given.{what}"
                                    f"{', axis=1' if what == 'columns' else ''}) or plain arrays")


def as_given(given: Any, name: str = "given") -> Any:
    """The given label matrix as int8 (N, K) with values 1 / 0 / -1.

    int8 arrays and memmaps pass unchanged (their values are checked chunk by chunk
    where they are read); bool, other integer and float matrices are checked (no NaN,
    only -1 / 0 / 1) and converted; anything else is refused with one line."""
    given = _as_array(given, name)
    shape = getattr(given, "shape", None)
    if shape is None or len(shape) != 2:
        raise LabelfixError(f"{name}: shape {shape}: must be (N, K)")
    dtype = getattr(given, "dtype", None)
    if dtype is None:
        return given
    dtype = np.dtype(dtype)
    if dtype == np.int8:
        return given
    if dtype == np.bool_:
        return np.asarray(given, dtype=np.int8)
    if dtype.kind not in "iuf":
        raise LabelfixError(f"{name}: dtype {dtype}: labels must be numbers 1 / 0 / -1 (unknown)")
    n, k = shape
    rows = _rows_per_chunk(k)
    out = np.empty((n, k), np.int8)
    for a in range(0, n, rows):
        block = np.asarray(given[a:a + rows])
        if dtype.kind == "f":
            nan = np.isnan(block)
            if nan.any():
                r, c = np.argwhere(nan)[0]
                raise LabelfixError(f"{name}: row {a + r}, column {c}: NaN; use -1 for an unknown label")
        bad = (block != 1) & (block != 0) & (block != -1)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise LabelfixError(f"{name}: row {a + r}, column {c}: label {block[r, c]} must be 1, 0 or -1")
        out[a:a + rows] = block
    return out


def as_cell_array(value: Any, name: str, shape: tuple[int, int]) -> Any:
    """An optional (N, K) per-cell input (losses, two_view, ...): converted like
    :func:`as_given`, numeric, with the given labels' shape."""
    value = _as_array(value, name)
    if value is None:
        return None
    if tuple(getattr(value, "shape", ())) != tuple(shape):
        raise LabelfixError(f"{name}: shape {tuple(getattr(value, 'shape', ()))}: does not match given {tuple(shape)}")
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind not in "biuf":
        raise LabelfixError(f"{name}: dtype {np.dtype(dtype)}: must be numbers")
    return value


def as_features(value: Any, name: str, n: int) -> np.ndarray:
    """Image embeddings: float32 (N, D), converted like :func:`as_given` (paired with the
    labels by row position), ``n`` rows, numbers; rows that are NaN throughout (images
    without an embedding) are allowed, but not every row; a row NaN in some values only,
    and infinite values or values beyond float32's range, are refused naming the row."""
    value = _as_array(value, name)
    shape = tuple(getattr(value, "shape", ()))
    if len(shape) != 2 or shape[0] != n or shape[1] < 1:
        raise LabelfixError(f"{name}: shape {shape}: expected (N, D) embeddings with N = {n}, the rows of given")
    if np.dtype(value.dtype).kind not in "biuf":
        raise LabelfixError(f"{name}: dtype {np.dtype(value.dtype)}: must be numbers")
    raw = np.asarray(value)
    with np.errstate(over="ignore"):
        x = raw.astype(np.float32, copy=False)
    bad = np.isinf(x).any(1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "an infinite value" if np.isinf(raw[row]).any() else "a value beyond float32's range"
        raise LabelfixError(f"{name}: row {row}: {what} (NaN rows are images without an embedding)")
    nan = np.isnan(x)
    partial = nan.any(1) & ~nan.all(1)
    if partial.any():
        row = int(np.flatnonzero(partial)[0])
        raise LabelfixError(f"{name}: row {row}: NaN in {int(nan[row].sum())} of {x.shape[1]} values; an image "
                            f"without an embedding is NaN throughout")
    if nan.all():
        raise LabelfixError(f"{name}: every row is NaN: no image has an embedding, so there is no neighbour "
                            f"evidence; leave features out")
    return x


def check_probabilities(probs: Any, name: str = "probs", *, logits: bool = False, nan_rows_ok: bool = True,
                        unit_interval: bool = True, nan_ok: bool = False) -> None:
    """Scan an (N, K) matrix chunk by chunk.

    - NaN: refused, except (with ``nan_rows_ok``) rows that are NaN in every column
      (an image the model could not score, e.g. an undecodable file), or anywhere with
      ``nan_ok`` (inputs where NaN means "not computed");
    - without ``logits`` (and with ``unit_interval``) every value must lie in [0, 1];
      values outside it look like logits: the message suggests ``probs_are_logits=True``.
    """
    n, k = probs.shape
    rows = _rows_per_chunk(k)
    for a in range(0, n, rows):
        block = np.asarray(probs[a:a + rows], dtype=np.float64)
        nan = np.isnan(block)
        if nan.any() and not nan_ok:
            partial = nan.any(1) & ~nan.all(1) if nan_rows_ok else nan.any(1)
            if partial.any():
                r = int(np.flatnonzero(partial)[0])
                c = int(np.flatnonzero(nan[r])[0])
                raise LabelfixError(f"{name}: row {a + r}, column {c}: NaN" +
                                    ("; only whole rows may be NaN (an image that was not scored)"
                                     if nan_rows_ok else ""))
        if logits or not unit_interval:
            continue
        with np.errstate(invalid="ignore"):
            out = (block < 0) | (block > 1)
        if out.any():
            r, c = np.argwhere(out)[0]
            lo, hi = np.nanmin(block), np.nanmax(block)
            hint = (f" (values from {lo:g} to {hi:g} look like logits: pass probs_are_logits=True)"
                    if name == "probs" else "")
            raise LabelfixError(f"{name}: row {a + r}, column {c}: {block[r, c]:g} is not a probability in [0, 1]"
                                + hint)


# =========================================================================== run tables

GIVEN_VALUES = ("1", "0", "unknown")


def _without_trailing_empty_rows(frame):
    """``frame`` less the rows at its end whose every field is empty (a spreadsheet saves
    the empty rows below a table as ``,,,,``; blank lines are skipped by pandas already).
    Only trailing rows go, so a row number in a message is the file's."""
    end = len(frame)
    while end and all(str(v).strip() in ("", "nan") for v in frame.iloc[end - 1].tolist()):
        end -= 1
    return frame if end == len(frame) else frame.iloc[:end]


def read_run_csv(path, **kwargs):
    """``pd.read_csv`` of a table labelfix wrote into a run directory, with one-line
    errors for an empty, non-UTF-8 or unparsable file (it may have been edited by hand).

    pandas' DtypeWarning is not shown: on a large file (a few 100,000 rows) the parser
    guesses each column's type per block of rows, and a column that is empty in one block
    and numeric in another (``p_clean`` of unknown cells) "has mixed types". The callers
    convert and check every value they use, so the warning is noise to the user (it came
    out of ``labelfix export coco`` at 1,000,000 images x 1,000 classes)."""
    import csv
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # utf-8-sig: a spreadsheet that saves "CSV UTF-8" writes a byte-order mark
            frame = pd.read_csv(path, keep_default_na=False, encoding="utf-8-sig", **kwargs)
        return _without_trailing_empty_rows(frame)
    except FileNotFoundError:
        raise LabelfixError(f"{path}: missing") from None
    except pd.errors.EmptyDataError:
        raise LabelfixError(f"{path}: empty file (not even a header)") from None
    except UnicodeDecodeError as err:
        raise LabelfixError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as err:
        raise LabelfixError(f"{path}: cannot parse CSV: {first_line(err)}") from None


def _first(mask) -> int | None:
    idx = np.flatnonzero(np.asarray(mask))
    return int(idx[0]) if idx.size else None


def _int_column(frame, col: str, path) -> np.ndarray:
    """An integer column as int64; one line naming the first row that is not an integer."""
    series = frame[col]
    if series.dtype.kind in "iu":
        return series.to_numpy(np.int64)
    codes, values = _categories(series)
    matches = [_INT_RE.fullmatch(v) for v in values]
    ok = np.array([m is not None for m in matches], dtype=bool)
    bad = _first(~ok[codes]) if len(values) else None
    if bad is not None:
        raise LabelfixError(f"{path}: row {bad + 2}: {col} {_show(series.iloc[bad])} is not an integer")
    return (np.array([int(m.group(1)) for m in matches], dtype=np.int64)[codes] if len(values)
            else np.zeros(0, np.int64))


#: an integer, also as a spreadsheet may save it (``526.0``)
_INT_RE = re.compile(r"([+-]?\d{1,18})(?:\.0*)?")


def parse_int(value) -> int:
    """One id or 0 / 1 of a CSV cell: ``526`` and ``526.0`` (as a spreadsheet saves it)
    alike, exactly (no float rounding of large ids); bools and ints pass through.
    ValueError for anything else (``1.5``, ``1e3``, ``nan``, text)."""
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return int(value)
    m = _INT_RE.fullmatch(str(value).strip())
    if m is None:
        raise ValueError(f"{value!r} is not an integer")
    return int(m.group(1))


def _categories(series) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct values as stripped strings) of a column: the checks then work on
    the few distinct values instead of every row (tables with tens of millions of rows)."""
    import pandas as pd

    cat = pd.Categorical(series)
    values = [str(v).strip() for v in cat.categories]
    codes = np.asarray(cat.codes, dtype=np.int64)
    if (codes < 0).any():   # NaN (a missing field)
        values.append("")
        codes = np.where(codes < 0, len(values) - 1, codes)
    return codes, values


def _mapped(series, path, col: str, allowed: dict, what: str) -> np.ndarray:
    """Map a column's stripped values through ``allowed``; one line for the first row
    whose value is not a key."""
    codes, values = _categories(series)
    table = np.array([allowed.get(v, _MISSING_CODE) for v in values], dtype=np.int64)
    out = table[codes] if len(values) else np.zeros(0, np.int64)
    bad = _first(out == _MISSING_CODE)
    if bad is not None:
        raise LabelfixError(f"{path}: row {bad + 2}: {col} {_show(series.iloc[bad])} {what}")
    return out


_MISSING_CODE = -(2**62)


def _show(value) -> str:
    """A cell value for a message: strings quoted (blanks visible), numbers plain."""
    return repr(value) if isinstance(value, str) else str(value)


def _check_ids_and_classes(frame, path, labelset, require: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shared part of the corrections / decisions checks: required columns present,
    image ids known, class names known and, where a category_id column exists, agreeing
    with the class name. Returns (row, column) cell indices."""
    missing = [c for c in require if c not in frame.columns]
    if missing:
        raise LabelfixError(f"{path}: missing column(s) {', '.join(missing)}")
    image_ids = _int_column(frame, "image_id", path)
    row_of = labelset.image_rows()
    known = np.isin(image_ids, row_of.index.to_numpy())
    bad = _first(~known)
    if bad is not None:
        raise LabelfixError(f"{path}: row {bad + 2}: image_id {image_ids[bad]} is not an image of the run")
    rows = row_of.loc[image_ids].to_numpy()
    names = labelset.classes["name"].astype(str).tolist()
    cls = frame["class"]
    cols = _mapped(cls, path, "class", {n.strip(): k for k, n in enumerate(names)}, "is not a class of the run")
    if "category_id" in frame.columns:
        cat = _int_column(frame, "category_id", path)
        expected = labelset.classes["category_id"].to_numpy(np.int64)[cols]
        bad = _first(cat != expected)
        if bad is not None:
            raise LabelfixError(f"{path}: row {bad + 2}: category_id {cat[bad]} does not match class "
                                f"{cls.iloc[bad]!r} (its category_id is {expected[bad]})")
    if "file_name" in frame.columns:
        fn = frame["file_name"].astype(str).to_numpy()
        expected = labelset.images["file_name"].astype(str).to_numpy()[rows]
        bad = _first(fn != expected)
        if bad is not None:
            raise LabelfixError(f"{path}: row {bad + 2}: file_name {fn[bad]!r} does not match image_id "
                                f"{image_ids[bad]} ({expected[bad]!r})")
    return rows, cols


#: names a reviewer may give the decisions column by mistake (stripped, lower case)
DECISION_COLUMN_LOOKALIKES = ("accept", "accepted", "decision", "decisions")


def separator_in(header: Sequence[str]) -> str | None:
    """``"';'"`` or ``"tabs"`` when the header is one column holding that separator."""
    if len(header) != 1:
        return None
    return next((name for ch, name in ((";", "';'"), ("\t", "tabs")) if ch in str(header[0])), None)


def may_hold_decisions(header: Sequence[str]) -> bool:
    """Whether a corrections.csv with this header may hold a reviewer's decisions: an
    ``accept`` column, one named like it (:data:`DECISION_COLUMN_LOOKALIKES`), or one column
    holding "accept" and a separator (saved with ';' or tabs)."""
    header = [str(c) for c in header]
    return ("accept" in header or any(c.strip().lower() in DECISION_COLUMN_LOOKALIKES for c in header)
            or (separator_in(header) is not None and "accept" in header[0].lower()))


def check_corrections_header(header: Sequence[str], path, required: Sequence[str]) -> None:
    """The header of ``RUN/corrections.csv`` as people save it: the ``required`` columns
    present (a file saved with ';' or tabs as the separator reads as one column: said so),
    and the decisions column named ``accept`` exactly (``Accept``, ``accept `` or
    ``decision`` would be read as no decision at all). One line naming the file."""
    header = [str(c) for c in header]
    if "accept" not in header:
        near = [c for c in header if c.strip().lower() in DECISION_COLUMN_LOOKALIKES]
        if near:
            raise LabelfixError(f"{path}: column {near[0]!r}: the decisions column must be named 'accept'")
    missing = [c for c in required if c not in header]
    if missing:
        sep = separator_in(header)
        hint = f" (the header is one column separated by {sep}: save the file as comma-separated CSV)" if sep else ""
        raise LabelfixError(f"{path}: missing column(s) {', '.join(missing)}{hint}")


def check_corrections(frame, path, labelset, required: Sequence[str]) -> None:
    """Schema of ``RUN/corrections.csv`` (a file people edit by hand): ``required``
    columns present; image ids of the run; class and category_id agreeing with the run's
    classes; ``given`` one of 1 / 0 / unknown and equal to the run's label of that cell;
    ``suggested`` 1 or 0, different from ``given`` and agreeing with ``action``
    (add = 1, remove = 0); ``score`` a number; no cell twice. One line naming the file,
    the row (as a spreadsheet counts: the header is row 1) and the problem; the header
    first (:func:`check_corrections_header`)."""
    check_corrections_header(frame.columns, path, required)
    rows, cols = _check_ids_and_classes(frame, path, labelset, required)
    if "given" in frame.columns:
        code = _mapped(frame["given"], path, "given", {"1": 1, "0": 0, "unknown": -1}, "must be 1, 0 or unknown")
        actual = np.asarray(labelset.labels)[rows, cols].astype(np.int64)
        bad = _first(code != actual)
        if bad is not None:
            raise LabelfixError(f"{path}: row {bad + 2}: given {frame['given'].iloc[bad]} does not match the run's "
                                f"label of that cell ({ {1: '1', 0: '0', -1: 'unknown'}[int(actual[bad])]})")
    else:
        code = None
    action = None
    if "action" in frame.columns:
        action = _mapped(frame["action"], path, "action", {"add": 1, "remove": 0}, "must be add or remove")
    if "suggested" in frame.columns:
        sug = _mapped(frame["suggested"], path, "suggested", {"1": 1, "0": 0, "1.0": 1, "0.0": 0}, "must be 1 or 0")
        if action is not None:
            bad = _first(sug != action)
            if bad is not None:
                raise LabelfixError(f"{path}: row {bad + 2}: suggested {sug[bad]} contradicts action "
                                    f"{frame['action'].iloc[bad]!r} (add suggests 1, remove 0)")
        if code is not None:
            bad = _first(sug == code)
            if bad is not None:
                raise LabelfixError(f"{path}: row {bad + 2}: suggested {sug[bad]} is the given label (not a change)")
    if "score" in frame.columns:
        import pandas as pd

        score = pd.to_numeric(frame["score"], errors="coerce").to_numpy(np.float64)
        bad = _first(~np.isfinite(score))
        if bad is not None:
            raise LabelfixError(f"{path}: row {bad + 2}: score {_show(frame['score'].iloc[bad])} is not a finite number")
    _check_unique_cells(frame, path, labelset, rows, cols)


DECISION_VALUES = ("", "accepted", "rejected")


def check_decisions(frame, path, labelset) -> None:
    """Schema of ``RUN/decisions.csv``: columns image_id, class, decision; image ids and
    classes of the run (category_id, when present, agreeing with the class); decision
    accepted / rejected / empty; at most one row per cell."""
    rows, cols = _check_ids_and_classes(frame, path, labelset, ("image_id", "class", "decision"))
    _mapped(frame["decision"], path, "decision", {v: 0 for v in DECISION_VALUES}, "must be accepted, rejected or empty")
    _check_unique_cells(frame, path, labelset, rows, cols)


def _check_unique_cells(frame, path, labelset, rows, cols) -> None:
    import pandas as pd

    cell = rows.astype(np.int64) * max(1, labelset.num_classes) + cols
    bad = _first(pd.Series(cell).duplicated().to_numpy())
    if bad is not None:
        raise LabelfixError(f"{path}: row {bad + 2}: a second row for image_id {frame['image_id'].iloc[bad]}, "
                            f"class {frame['class'].iloc[bad]!r}")


def require_known_labels(labels, rows, where: str, chunk_rows: int = 65_536) -> None:
    """Refuse to train on rows whose cells are all unknown (nothing to learn): one line
    naming the data. Chunked, stops at the first known cell."""
    for s in range(0, len(rows), chunk_rows):
        if (np.asarray(labels[rows[s:s + chunk_rows]]) != UNK).any():
            return
    raise LabelfixError(f"{where}: no known label in the training images (every cell is unknown): nothing to "
                        f"train on; see `labelfix info {where}`")


# =========================================================================== images


def require_readable_images(labelset, rows, where: str) -> None:
    """Refuse to train on images none of which can be read: decode the images of
    ``rows`` in order until one succeeds (in a normal dataset, the first). When none
    does, one line naming the first failure, the count and the image folder. (Single
    unreadable images are a documented skip with a count, not an error.)"""
    from labelfix.data.image import DECODE_ERRORS, load_rgb

    rows = np.asarray(rows)
    first = None
    for i in rows.tolist():
        try:
            load_rgb(labelset.image_path(i), labelset.image_root)
            return
        except DECODE_ERRORS as err:
            if first is None:
                first = (labelset.images.at[i, "file_name"], err)
    if first is None:
        return
    name, err = first
    reason = "missing" if isinstance(err, FileNotFoundError) else (err.strerror or str(err)) if isinstance(
        err, OSError) else str(err)
    raise LabelfixError(f"{where}: none of the {len(rows)} training images can be read (first: {name}: "
                        f"{reason}); image folder {labelset.image_root}: check --images")


def require_image_folder(labelset, option: str = "--images") -> None:
    """Refuse an image folder that holds none of the label file's images (a wrong
    ``--images`` given to a command that records the folder without reading the images,
    such as ``labelfix noise``): checks the images in order until one is there (in a
    normal dataset, the first). Images missing from a folder that has others are left to
    the readers, which skip them with a count."""
    from labelfix.data.image import image_problem

    for i in range(labelset.num_images):
        if image_problem(labelset.image_path(i), labelset.image_root) != "missing":
            return
    if labelset.num_images:
        raise LabelfixError(f"{option} {labelset.image_root}: none of the {labelset.num_images} image files of the "
                            f"labels is there (first: {labelset.images.at[0, 'file_name']}); give the folder their "
                            f"file names are relative to")


# =========================================================================== run directory


def check_run_labelset(cls, d, labels, images, classes, source, verified):
    """Build the LabelSet of run directory ``d`` from its files, checking what a damaged
    or hand-edited run can get wrong, one line naming the file: classes.json records
    (names unique and non-empty, integer category ids), images.csv columns, labels.npy
    (int8 values 1 / 0 / -1, shape (images, classes)), verified.npy (bool, same shape), source.json (an
    object)."""
    from pathlib import Path

    import pandas as pd

    where = Path(d)
    if not isinstance(source, dict):
        raise LabelfixError(f"{where / 'source.json'}: expected a JSON object")
    check_class_names(classes["name"].tolist(), str(where / "classes.json"), record=lambda i: f"record {i}")
    try:
        classes["category_id"] = [check_number(v, f"{where / 'classes.json'}: record {i}: category_id", integer=True)
                                  for i, v in enumerate(classes["category_id"])]
        classes["category_id"] = classes["category_id"].astype(np.int64)
    except (TypeError, ValueError) as err:
        raise LabelfixError(f"{where / 'classes.json'}: category_id: {err}") from None
    missing = [c for c in ("image_id", "file_name", "width", "height") if c not in images.columns]
    if missing:
        raise LabelfixError(f"{where / 'images.csv'}: missing column(s) {', '.join(missing)}")
    for col in ("image_id", "width", "height"):
        if images[col].dtype.kind not in "iu":
            converted = pd.to_numeric(images[col], errors="coerce")
            bad = _first(converted.isna().to_numpy() | (converted != converted.round()).to_numpy())
            if bad is not None:
                raise LabelfixError(f"{where / 'images.csv'}: row {bad + 2}: {col} {images[col].iloc[bad]!r} "
                                    f"is not an integer")
            images[col] = converted.astype(np.int64)
    n, k = len(images), len(classes)
    if getattr(labels, "ndim", 0) != 2 or tuple(labels.shape) != (n, k):
        raise LabelfixError(f"{where / 'labels.npy'}: shape {tuple(getattr(labels, 'shape', ()))} does not match "
                            f"images.csv ({n} images) x classes.json ({k} classes)")
    if labels.dtype != np.int8:
        raise LabelfixError(f"{where / 'labels.npy'}: dtype {labels.dtype}, expected int8 (1 / 0 / -1)")
    bad = first_invalid_cell(labels)   # about 16 MB of int8 at a time (a memmap)
    if bad is not None:
        raise LabelfixError(f"{where / 'labels.npy'}: row {bad[0]}, column {bad[1]}: value {bad[2]}, expected "
                            f"1 / 0 / -1")
    if verified is not None and (tuple(verified.shape) != (n, k) or verified.dtype != np.bool_):
        raise LabelfixError(f"{where / 'verified.npy'}: {verified.dtype} {tuple(verified.shape)}, expected bool "
                            f"({n}, {k})")
    root = source.get("image_root")
    if root is not None and not isinstance(root, str):
        raise LabelfixError(f"{where / 'source.json'}: image_root must be a folder path, got {root!r}")
    return cls(labels, images, classes, Path(root) if root else None, source, verified)
