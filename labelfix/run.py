"""The run directory: what ``labelfix train`` writes and every later command reads.

Layout and file formats: docs/internals.md ("Run directory"). :func:`load_run` is the
Python entry point (``labelfix.load_run``).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, describe_os_error
from labelfix.io.outputs import RUN_OWNED  # noqa: F401  (the names a run directory owns)
from labelfix.io.arrays import load_npy, read_cell_array
from labelfix.labels import LabelSet

CORRECTIONS_COLUMNS = [
    "image_id", "file_name", "class", "category_id", "given", "suggested",
    "action", "state", "score", "p_clean", "probability",
]
#: the columns every reader of corrections.csv needs (the others are checked when present)
CORRECTIONS_REQUIRED = ("image_id", "class", "category_id", "action", "score")


#: the fields of ``stats/state.json`` (labelfix.train.stats.write_state): type, least value
STATE_FIELDS = {"epochs_recorded": (int, 0), "last_epoch": (int, None), "complete": (bool, None),
                "out_of_sample": (bool, None), "rounds": (int, 1)}


def read_stats_state(path: Path) -> dict:
    """``stats/state.json`` (how far the statistics got): a JSON object whose known fields
    have their types and least values (:data:`STATE_FIELDS`), else one line naming the
    file and the field."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LabelfixError(f"{path}: corrupt JSON") from None
    except OSError as e:
        raise LabelfixError(describe_os_error(e)) from None
    if not isinstance(state, dict):
        raise LabelfixError(f"{path}: corrupt: expected a JSON object, found {type(state).__name__}")
    for name, (kind, low) in STATE_FIELDS.items():
        value = state.get(name)
        if value is None:
            continue
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok or (low is not None and value < low):
            want = "true or false" if kind is bool else "an integer" + (f" >= {low}" if low is not None else "")
            raise LabelfixError(f"{path}: field {name!r}: {value!r}, expected {want}")
    return state


class Run:
    """A labelfix run directory (read side). Arrays are opened memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise LabelfixError(f"{self.path}: run directory not found")
        if not (self.path / "labels.npy").exists():
            raise LabelfixError(f"{self.path}: not a labelfix run directory (no labels.npy; run `labelfix train` first)")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def labelset(self) -> LabelSet:
        """The given labels of all N images (memory-mapped)."""
        return LabelSet.load(self.path)

    @cached_property
    def config(self) -> dict:
        """``config.yaml`` (:func:`labelfix.io.yaml_file.read_yaml`); {} when absent."""
        from labelfix.io.yaml_file import read_yaml

        p = self.path / "config.yaml"
        if not p.exists():
            return {}
        doc = read_yaml(p) or {}
        if not isinstance(doc, dict):
            raise LabelfixError(f"{p}: corrupt config: the top level is not a mapping")
        return doc

    @property
    def split(self) -> np.ndarray:
        """int8 (N,): 0 train, 1 held-out validation, 2 held out by a cross-fitting fold
        model (its own run directory, ``folds/round<r>/fold<f>/``); all 0 when the file is
        absent."""
        p = self.path / "split.npy"
        n = self.labelset.num_images
        if not p.exists():
            return np.zeros(n, np.int8)
        arr = load_npy(p)
        if arr.dtype.kind not in "iu" or arr.shape != (n,):
            raise LabelfixError(f"{p}: dtype {arr.dtype}, shape {arr.shape}: expected integers of shape ({n},)")
        bad = np.flatnonzero((arr < 0) | (arr > 2))
        if bad.size:
            raise LabelfixError(f"{p}: row {int(bad[0])}: {int(arr[bad[0]])}, expected 0 (train), 1 (validation) "
                                f"or 2 (held out by a fold model)")
        return arr

    @property
    def folds(self) -> np.ndarray | None:
        """int (N,): the cross-fitting fold of every image (-1: validation rows); None
        when the run is not cross-fitted (no ``folds.npy``)."""
        p = self.path / "folds.npy"
        if not p.exists():
            return None
        n = self.labelset.num_images
        arr = load_npy(p)
        if arr.dtype.kind not in "iu" or arr.shape != (n,):
            raise LabelfixError(f"{p}: dtype {arr.dtype}, shape {arr.shape}: expected integer folds of shape ({n},)")
        k = (self.config.get("train") or {}).get("folds")
        top = int(k) - 1 if isinstance(k, int) and k >= 2 else int(arr.max(initial=0))
        bad = np.flatnonzero((arr < -1) | (arr > top))
        if bad.size:
            raise LabelfixError(f"{p}: row {int(bad[0])}: fold {int(arr[bad[0]])}, expected -1 (validation) or a "
                                f"fold 0 to {top}" + (f" (the run has {k} folds)" if top == int(k or 0) - 1 else ""))
        return arr

    def _array(self, folder: str, name: str, required: bool) -> np.ndarray | None:
        p = self.path / folder / f"{name}.npy"
        if not p.exists():
            if required:
                hint = ("`labelfix train --resume` rewrites a cross-fitted run's round statistics"
                        if folder.startswith("stats/round") else
                        f"run `labelfix {'train' if folder.startswith('stats') else 'clean'}` first")
                raise LabelfixError(f"{p}: missing; {hint}")
            return None
        return read_cell_array(p, self.labelset.labels.shape)

    def stat(self, name: str, required: bool = True, *, round: int | None = None) -> np.ndarray | None:
        """A per-cell statistic written by training: ``logits``, ``loss_mean``,
        ``two_view``, ``role_logits`` (float (N, K), memory-mapped); ``round``: the merged
        held-out statistics of one cross-fitting round (``stats/round<r>/``)."""
        return self._array("stats" if round is None else f"stats/round{int(round)}", name, required)

    def cell(self, name: str, required: bool = True) -> np.ndarray | None:
        """A per-cell output of clean: ``p_clean``, ``score``, ``state``, ``suggested``."""
        return self._array("cells", name, required)

    @property
    def stats_state(self) -> dict:
        """``stats/state.json`` checked (:func:`read_stats_state`); {} when absent."""
        p = self.path / "stats" / "state.json"
        return read_stats_state(p) if p.exists() else {}

    def checkpoint(self, which: str = "best") -> Path:
        p = self.path / "checkpoints" / f"{which}.pt"
        if not p.exists():
            alt = self.path / "checkpoints" / "last.pt"
            if which == "best" and alt.exists():
                return alt
            raise LabelfixError(f"{p}: checkpoint not found")
        return p

    def corrections(self) -> pd.DataFrame:
        """``corrections.csv`` written by ``labelfix clean`` (schema in product.md), checked
        (people edit it by hand): see :func:`labelfix.validation.check_corrections`. One
        line naming the file, the row and the problem for an empty, non-UTF-8 or
        malformed file, an unknown image or class, a category_id that contradicts the
        class, ``suggested`` not 1 / 0, ``given`` not 1 / 0 / unknown."""
        from labelfix.validation import check_corrections, read_run_csv

        p = self.path / "corrections.csv"
        if not p.exists():
            raise LabelfixError(f"{p}: missing; run `labelfix clean {self.path}` first")
        # text as written where a column may be empty (p_clean, probability of unscored cells; accept)
        frame = read_run_csv(p, dtype={c: str for c in ("given", "file_name", "class", "action", "state", "p_clean",
                                                       "probability", "accept")})
        check_corrections(frame, p, self.labelset, required=CORRECTIONS_REQUIRED)
        return frame


def load_run(path: str | Path) -> Run:
    """Open a run directory written by ``labelfix train`` (and ``labelfix clean``)."""
    return Run(path)
