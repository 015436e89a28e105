"""COCO JSON reader (detection or image-level annotations) with LVIS fields.

Label states (methods.md, "Label states"):
- a class is positive on an image when any annotation of that category exists there;
- LVIS-style files (any image carries ``neg_category_ids`` or
  ``not_exhaustive_category_ids``): ``neg_category_ids`` are verified negatives,
  ``not_exhaustive_category_ids`` stay positive where annotated (image level), every
  other cell is unknown;
- plain COCO is exhaustive: other classes are negative, or unknown with
  ``unlabeled="unknown"``.
A top-level ``"labelfix": {"unlabeled": ..., "image_root": ...}`` record (written by
``labelfix export coco`` and ``labelfix noise``) sets the defaults for ``unlabeled`` and
the image folder.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools.coco import COCO

from labelfix.errors import LabelfixError
from labelfix.io.paths import check_file_name, default_image_root
from labelfix.labels import NEG, POS, UNK, LabelSet

UNLABELED_CHOICES = ("negative", "unknown")


def load_json(path: Path) -> dict:
    """Read a JSON object with one-line errors for missing, unreadable or invalid files."""
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise LabelfixError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LabelfixError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise LabelfixError(f"{path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise LabelfixError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise LabelfixError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _int_id(value: object, where: str, key: str) -> int:
    # bool is an int subclass in Python; a JSON true/false is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelfixError(f"{where}: '{key}' must be an integer, got {value!r}")
    return value


def _records(data: dict, key: str, path: Path, required: bool = True) -> list:
    if key not in data:
        if required:
            raise LabelfixError(f"{path}: missing top-level key '{key}'")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise LabelfixError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    for i, rec in enumerate(value):
        if not isinstance(rec, dict):
            raise LabelfixError(f"{path}: {key}[{i}]: expected an object, got {type(rec).__name__}")
    return value


def _validate(data: dict, path: Path) -> None:
    images = _records(data, "images", path)
    cats = _records(data, "categories", path)
    anns = _records(data, "annotations", path, required=False)
    if not cats:
        raise LabelfixError(f"{path}: 'categories' is empty; at least one class is needed")
    seen: set[int] = set()
    for i, c in enumerate(cats):
        where = f"{path}: categories[{i}]"
        for key in ("id", "name"):
            if key not in c:
                raise LabelfixError(f"{where}: missing key '{key}'")
        cid = _int_id(c["id"], where, "id")
        if cid in seen:
            raise LabelfixError(f"{where}: duplicate category id {cid}")
        if not isinstance(c["name"], str) or not c["name"]:
            raise LabelfixError(f"{where}: 'name' must be a non-empty string")
        seen.add(cid)
    cat_ids = seen
    seen = set()
    for i, im in enumerate(images):
        where = f"{path}: images[{i}]"
        for key in ("id", "file_name"):
            if key not in im:
                raise LabelfixError(f"{where}: missing key '{key}'")
        iid = _int_id(im["id"], where, "id")
        if iid in seen:
            raise LabelfixError(f"{where}: duplicate image id {iid}")
        seen.add(iid)
        check_file_name(im["file_name"], f"{where} (id {iid})")
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key in im:
                ids = im[key]
                if not isinstance(ids, list):
                    raise LabelfixError(f"{where} (id {iid}): '{key}' must be a list")
                for c in ids:
                    if _int_id(c, f"{where} (id {iid})", key) not in cat_ids:
                        raise LabelfixError(f"{where} (id {iid}): '{key}' names unknown category id {c}")
    img_ids = seen
    for i, a in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        for key in ("image_id", "category_id"):
            if key not in a:
                raise LabelfixError(f"{where}: missing key '{key}'")
        if _int_id(a["image_id"], where, "image_id") not in img_ids:
            raise LabelfixError(f"{where}: unknown image_id {a['image_id']}")
        if _int_id(a["category_id"], where, "category_id") not in cat_ids:
            raise LabelfixError(f"{where}: unknown category_id {a['category_id']}")


def is_lvis(data: dict) -> bool:
    return any(
        "neg_category_ids" in im or "not_exhaustive_category_ids" in im for im in data.get("images", [])
    )


def build_coco(data: dict) -> COCO:
    """A pycocotools COCO index over an in-memory dataset dict (its progress prints silenced)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_coco(
    path: str | Path,
    images: str | Path | None = None,
    unlabeled: str | None = None,
) -> LabelSet:
    """Read a COCO / LVIS JSON file into a :class:`LabelSet`.

    Args:
        path: the JSON file.
        images: folder that ``file_name`` values are relative to (default: the JSON's folder).
        unlabeled: ``"negative"`` or ``"unknown"`` for classes an image does not mention.
            Default: the file's ``labelfix.unlabeled`` record, else ``"unknown"`` for LVIS
            files and ``"negative"`` for plain COCO.
    """
    path = Path(path)
    data = load_json(path)
    _validate(data, path)
    lvis = is_lvis(data)
    meta = data.get("labelfix") if isinstance(data.get("labelfix"), dict) else {}
    if unlabeled is None:
        unlabeled = meta.get("unlabeled") or ("unknown" if lvis else "negative")
    if unlabeled not in UNLABELED_CHOICES:
        raise LabelfixError(f"{path}: unlabeled must be one of {UNLABELED_CHOICES}, got {unlabeled!r}")

    coco = build_coco(data)
    cat_ids = sorted(coco.getCatIds())
    cats = coco.loadCats(cat_ids)
    classes = pd.DataFrame({"name": [c["name"] for c in cats], "category_id": np.array(cat_ids, np.int64)})
    img_recs = data["images"]
    frame = pd.DataFrame(
        {
            "image_id": np.array([im["id"] for im in img_recs], np.int64),
            "file_name": [check_file_name(im["file_name"], str(path)) for im in img_recs],
            "width": np.array([int(im.get("width") or 0) for im in img_recs], np.int64),
            "height": np.array([int(im.get("height") or 0) for im in img_recs], np.int64),
        }
    )
    row_of = pd.Series(np.arange(len(frame)), index=frame["image_id"].to_numpy())
    col_of = pd.Series(np.arange(len(cat_ids)), index=np.array(cat_ids, np.int64))

    default = UNK if (unlabeled == "unknown") else NEG
    labels = np.full((len(frame), len(cat_ids)), default, dtype=np.int8)
    if lvis:
        for r, im in enumerate(img_recs):
            neg = im.get("neg_category_ids") or []
            if neg:
                labels[r, col_of.loc[neg].to_numpy()] = NEG
    anns = data.get("annotations", [])
    if anns:
        ann_img = np.fromiter((a["image_id"] for a in anns), np.int64, len(anns))
        ann_cat = np.fromiter((a["category_id"] for a in anns), np.int64, len(anns))
        labels[row_of.loc[ann_img].to_numpy(), col_of.loc[ann_cat].to_numpy()] = POS

    if images is None and meta.get("image_root"):
        images = meta["image_root"]  # files written by labelfix into another folder
    root = default_image_root(path, images)
    source = {"path": str(path.resolve()), "format": "coco", "unlabeled": unlabeled, "lvis": lvis}
    return LabelSet(labels, frame, classes, root, source)
