"""The tri-state label matrix and its image / class records: the one type every
command passes around.

Conventions: N images, K classes; ``labels`` is ``np.int8`` (N, K) with
``POS = 1``, ``NEG = 0``, ``UNK = -1``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, first_line
from labelfix.io import atomic
from labelfix.io.arrays import load_npy

POS, NEG, UNK = 1, 0, -1
STATE_NAMES = {POS: "1", NEG: "0", UNK: "unknown"}

IMAGE_COLUMNS = ["image_id", "file_name", "width", "height"]
CLASS_COLUMNS = ["name", "category_id"]


@dataclass
class LabelSet:
    """Given labels of a partially labeled multi-label dataset.

    Attributes:
        labels: int8 array (N, K), 1 positive / 0 negative / -1 unknown. May be a
            read-only memmap.
        images: DataFrame with columns ``image_id`` (int64), ``file_name`` (str),
            ``width``, ``height`` (int64, 0 when unknown), row i = row i of ``labels``.
        classes: DataFrame with columns ``name`` (str) and ``category_id`` (int64), row k =
            column k of ``labels``.
        image_root: folder that relative ``file_name`` values are resolved against.
        source: where the labels came from: ``path``, ``format`` and the reader's
            options (COCO: ``unlabeled``, ``lvis``, ``image_root``).
        verified: bool array (N, K) or None: cells whose label a person confirmed in an
            earlier review (the cleaned COCO's ``labelfix.verified``). Training and
            cleaning trust them: never suggested, never down-weighted.
    """

    labels: np.ndarray
    images: pd.DataFrame
    classes: pd.DataFrame
    image_root: Path | None = None
    source: dict = field(default_factory=dict)
    verified: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, frame, columns in (("images", self.images, ("image_id", "file_name")),
                                     ("classes", self.classes, ("name", "category_id"))):
            missing = [c for c in columns if c not in getattr(frame, "columns", ())]
            if missing:
                raise LabelfixError(f"LabelSet: {name}: expected a DataFrame with columns {', '.join(columns)} "
                                    f"(missing {', '.join(missing)})")
        self.images = self.images.reset_index(drop=True)
        self.classes = self.classes.reset_index(drop=True)
        n, k = len(self.images), len(self.classes)
        if not isinstance(self.labels, np.ndarray):
            raise LabelfixError(f"LabelSet: labels: expected an int8 numpy array ({n}, {k}), got "
                                f"{type(self.labels).__name__}")
        if self.labels.shape != (n, k):
            raise LabelfixError(f"LabelSet: labels: shape {self.labels.shape} is not ({n} images, {k} classes)")
        if self.labels.dtype != np.int8:
            raise LabelfixError(f"LabelSet: labels: dtype {self.labels.dtype}, expected int8 1 / 0 / -1 "
                                f"(labels.astype(np.int8))")
        # a memmap is a run's file, checked where it is read (validation.check_run_labelset)
        bad = None if isinstance(self.labels, np.memmap) else first_invalid_cell(self.labels)
        if bad is not None:
            raise LabelfixError(f"LabelSet: labels: row {bad[0]}, column {bad[1]}: {bad[2]}, expected "
                                f"1 (positive), 0 (negative) or -1 (unknown)")
        if self.verified is not None and (self.verified.shape != (n, k) or self.verified.dtype != np.bool_):
            raise LabelfixError(f"LabelSet: verified: expected bool ({n}, {k}), got {self.verified.dtype} "
                                f"{self.verified.shape}")

    def trusted(self) -> np.ndarray:
        """bool (N, K): the verified cells (all False when none are)."""
        if self.verified is None:
            return np.zeros(self.labels.shape, dtype=bool)
        return np.asarray(self.verified, dtype=bool)

    # -- shape ---------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def class_names(self) -> list[str]:
        return self.classes["name"].astype(str).tolist()

    def image_rows(self) -> pd.Series:
        """``image_id`` -> row position (use ``.loc[ids]``; unknown ids raise KeyError)."""
        return pd.Series(np.arange(self.num_images), index=self.images["image_id"].to_numpy())

    def class_columns(self) -> pd.Series:
        """``category_id`` -> column position (use ``.loc[ids]``)."""
        return pd.Series(np.arange(self.num_classes), index=self.classes["category_id"].to_numpy())

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i`` (``file_name`` resolved against ``image_root``)."""
        p = Path(str(self.images.at[i, "file_name"]))
        if p.is_absolute() or self.image_root is None:
            return p
        return self.image_root / p

    def image_size(self, i: int) -> tuple[int, int] | None:
        """``(width, height)`` of image ``i``: the label file's where it gave both, else the
        image file's header (:func:`labelfix.data.image.header_size`); None when neither."""
        w, h = int(self.images.at[i, "width"] or 0), int(self.images.at[i, "height"] or 0)
        if w > 0 and h > 0:
            return w, h
        from labelfix.data.image import header_size

        return header_size(self.image_path(i), self.image_root)

    # -- statistics ------------------------------------------------------------
    def counts(self, chunk_rows: int = 65536) -> pd.DataFrame:
        """Per-class positives / negatives / unknown counts (chunked, memmap friendly)."""
        pos, neg = count_known(self.labels, chunk_rows=chunk_rows)
        out = self.classes.copy()
        out["positives"] = pos
        out["negatives"] = neg
        out["unknown"] = self.num_images - pos - neg
        return out

    def subset(self, rows: np.ndarray) -> "LabelSet":
        """A new LabelSet with the given image rows (positions or a bool mask; labels
        copied into memory)."""
        rows = np.asarray(rows)
        if rows.size == 0:   # [] is float64 to numpy, which cannot index
            rows = rows.astype(np.int64)
        return LabelSet(
            np.ascontiguousarray(self.labels[rows]),
            self.images.iloc[rows].reset_index(drop=True),
            self.classes.copy(),
            self.image_root,
            dict(self.source),
            None if self.verified is None else np.ascontiguousarray(self.verified[rows]),
        )

    def fingerprint(self, chunk_rows: int = 65536) -> str:
        """sha256 over the label matrix, image ids / file names and class records."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classes.astype(str).values.tolist()).encode())
        h.update(pd.util.hash_pandas_object(self.images[["image_id", "file_name"]], index=False).values.tobytes())
        for s in range(0, self.num_images, chunk_rows):
            h.update(np.ascontiguousarray(self.labels[s : s + chunk_rows]).tobytes())
        if self.verified is not None and self.verified.any():
            h.update(np.packbits(np.asarray(self.verified)).tobytes())
        return h.hexdigest()

    # -- persistence ---------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``classes.json``, ``images.csv``, ``labels.npy``, ``source.json`` and, when
        cells are verified, ``verified.npy``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic.write_json(
            d / "classes.json",
            [{"name": str(r.name), "category_id": int(r.category_id)} for r in self.classes.itertuples()],
        )
        atomic.write_csv(d / "images.csv", self.images[IMAGE_COLUMNS])
        with atomic.atomic_memmap(d / "labels.npy", self.labels.shape, np.int8) as arr:
            for s in range(0, self.num_images, 65536):
                arr[s : s + 65536] = self.labels[s : s + 65536]
        if self.verified is not None and self.verified.any():
            atomic.write_npy(d / "verified.npy", np.asarray(self.verified, dtype=bool))
        src = dict(self.source)
        src["image_root"] = str(self.image_root) if self.image_root is not None else None
        atomic.write_json(d / "source.json", src)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "LabelSet":
        """Read a LabelSet written by :meth:`save` (labels memory-mapped read-only)."""
        d = Path(directory)
        for name in ("classes.json", "images.csv", "labels.npy", "source.json"):
            if not (d / name).exists():
                raise LabelfixError(f"{d}: not a labelfix run directory (missing {name})")
        name = "classes.json"
        try:
            classes = pd.DataFrame(json.loads((d / name).read_text(encoding="utf-8")), columns=CLASS_COLUMNS)
            name = "images.csv"
            images = pd.read_csv(d / name, dtype={"file_name": str}, keep_default_na=False)
            name = "source.json"
            source = json.loads((d / name).read_text(encoding="utf-8"))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise LabelfixError(f"{d / name}: corrupt run directory file: {first_line(e)}") from None
        labels = load_npy(d / "labels.npy", mmap_mode="r" if mmap else None)
        verified = load_npy(d / "verified.npy") if (d / "verified.npy").exists() else None
        from labelfix.validation import check_run_labelset

        return check_run_labelset(cls, d, labels, images, classes, source, verified)


def first_invalid_cell(labels, chunk_cells: int = 1 << 24) -> tuple[int, int, int] | None:
    """``(row, column, value)`` of the first cell of ``labels`` (N, K) that is not 1 / 0 /
    -1, or None: min / max of about ``chunk_cells`` cells at a time (memmap friendly, no
    (N, K) temporary)."""
    n, k = labels.shape
    rows = max(1, chunk_cells // max(k, 1))
    for s in range(0, n, rows):
        block = np.asarray(labels[s:s + rows])
        if block.size and (block.min() < -1 or block.max() > 1):
            r, c = np.argwhere((block < -1) | (block > 1))[0]
            return s + int(r), int(c), int(block[r, c])
    return None


def count_known(labels, rows=None, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """int64 (K,) positives and int64 (K,) negatives per class in ``rows`` (default: all)
    of ``labels`` int8 (N, K), read in row chunks (memmap friendly)."""
    n = labels.shape[0] if rows is None else len(rows)
    pos = np.zeros(labels.shape[1], np.int64)
    neg = np.zeros(labels.shape[1], np.int64)
    for s in range(0, n, chunk_rows):
        block = np.asarray(labels[s:s + chunk_rows] if rows is None else labels[np.asarray(rows[s:s + chunk_rows])])
        pos += (block == POS).sum(0)
        neg += (block == NEG).sum(0)
    return pos, neg


def positive_only(labels, rows=None, chunk_rows: int | None = None) -> bool:
    """Whether the labels of ``rows`` (default: all) are positive-only: most cells unknown,
    and the known ones hold fewer negatives than positives. Single-positive labels are
    (one positive per image, nothing else known), and so are they after a review added
    positives and rejected a few suggestions. Which cells are known then depends on their
    value. Multi-label data with real negatives has many more negatives than positives
    (COCO: about 27 per positive); the unknown majority keeps densely labelled data with a
    few frequent classes out."""
    pos, neg = count_known(labels, rows, chunk_rows or 65536)
    return positive_only_counts(pos, neg, (labels.shape[0] if rows is None else len(rows)) * labels.shape[1])


def positive_only_counts(pos, neg, cells: int) -> bool:
    """:func:`positive_only` from per-class counts (:func:`count_known`) and the number of
    cells, for callers that have counted already."""
    known = int(np.sum(pos) + np.sum(neg))
    return bool(np.sum(neg) < np.sum(pos) and cells - known > known)


def imbalance(counts: pd.DataFrame) -> dict[str, float]:
    """CLS_Imb = max_k N_k / min_k N_k over classes with positives, and
    PN_Imb = sum negatives / sum positives (methods.md, "Imbalance")."""
    pos = counts["positives"].to_numpy()
    nz = pos[pos > 0]
    cls_imb = float(nz.max() / nz.min()) if len(nz) else float("nan")
    total_pos = int(pos.sum())
    pn = float(counts["negatives"].sum() / total_pos) if total_pos else float("inf")
    return {"cls_imb": cls_imb, "pn_imb": pn}
