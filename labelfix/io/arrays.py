"""Reading ``.npy`` arrays: the one reader of labelfix's array files (run directories,
cross-fitting folds, features), without pickles and with one line naming the file when
it cannot be read. Writing is :func:`labelfix.io.atomic.write_npy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelfix.errors import LabelfixError


def load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` without pickles; one line naming the file when it cannot be read."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as e:
        reason = "not a plain numeric array (object data, or not an .npy file)" if "pickle" in str(e) else str(e)
        raise LabelfixError(f"{path}: unreadable array: {reason}") from None
    except OSError as e:
        raise LabelfixError(f"{path}: unreadable array: {e}") from None
    except EOFError:   # an empty file (a copy that broke off, a full disk)
        raise LabelfixError(f"{path}: unreadable array: the file is empty") from None


def read_cell_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A per-cell ``.npy`` array of a run (memory-mapped), checked: readable without
    pickles, numbers (float, int or unsigned; not strings, objects, complex or bool), and
    of ``shape`` (N, K); else one line naming the file."""
    arr = load_npy(path, mmap_mode="r")
    if arr.dtype.kind not in "fiu":
        raise LabelfixError(f"{path}: dtype {arr.dtype}: expected numbers (float or integer)")
    if arr.shape != tuple(shape):
        raise LabelfixError(f"{path}: shape {arr.shape} does not match the labels {tuple(shape)}")
    return arr
