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
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools.coco import COCO

from labelfix.errors import LabelfixError, LabelfixWarning
from labelfix.io.paths import check_file_name, default_image_root
from labelfix.labels import NEG, POS, UNK, LabelSet

UNLABELED_CHOICES = ("negative", "unknown")


class _Constant(ValueError):
    """``NaN`` / ``Infinity`` / ``-Infinity`` in a file: not JSON numbers (RFC 8259)."""


def _refuse_constant(name: str):
    raise _Constant(name)


def _where_constant(raw: bytes) -> str:
    """Where the first NaN / Infinity of ``raw`` is, as ``annotations[12] (id 55) 'area'``
    (the error path only: the file is parsed again with the constants kept)."""
    mark = object()
    data = json.loads(raw, parse_constant=lambda name: mark)

    def holds(v) -> bool:
        return v is mark or (isinstance(v, list) and any(map(holds, v))) or (
            isinstance(v, dict) and any(map(holds, v.values())))

    if not isinstance(data, dict):
        return "a value"
    try:
        for key, value in data.items():
            if isinstance(value, list):
                for i, rec in enumerate(value):
                    if isinstance(rec, dict):
                        bad = next((k for k, v in rec.items() if holds(v)), None)
                        if bad is not None:
                            rid = f" (id {rec['id']})" if isinstance(rec.get("id"), int) else ""
                            return f"{key}[{i}]{rid} {bad!r}"
                    elif holds(rec):
                        return f"{key}[{i}]"
            elif holds(value):
                return f"top-level key {key!r}"
    except RecursionError:   # nested deeper than the walk goes
        pass
    return "a value"


#: more top-level keys than this are checked by the exact re-parse (a byte count per key
#: would cost one pass over the file each); COCO files have five or six
_COUNTED_KEYS = 8


def _top_level_duplicate(raw: bytes, data: dict) -> str | None:
    """A key the top-level object of ``raw`` holds twice (json keeps the last one
    silently: a second "annotations" list would hide the first). Each key is looked up as
    bytes first (as written, or \\u-escaped as ``json.dump`` writes it), so a file that is
    fine costs a few memchr passes; a key seen twice is confirmed by parsing again with the
    pairs of the top-level object. Another spelling of a key (``\\u0069mages``, ``\\/``) is
    found only when some key string repeats or by the exact parse of a UTF-16 / UTF-32
    file or one with many top-level keys."""
    def seen(k: str) -> int:
        forms = {json.dumps(k, ensure_ascii=False).encode(), json.dumps(k).encode()}
        return sum(raw.count(f) for f in forms)

    try:
        exact = len(data) > _COUNTED_KEYS or 0 in raw[:4] or any(seen(k) > 1 for k in data)
    except UnicodeEncodeError:   # a key with a lone surrogate: not countable as UTF-8
        exact = True
    if not exact:
        return None
    last: list = []

    def pairs(items):   # nested objects become None: the re-parse holds only the top level
        last[:] = [items]

    json.loads(raw, object_pairs_hook=pairs, parse_constant=_refuse_constant)
    seen_keys: set = set()
    for k, _ in last[0]:
        if k in seen_keys:
            return k
        seen_keys.add(k)
    return None


def load_json(path: Path, object_hook=None) -> dict:
    """Read a JSON object with one-line errors for missing, unreadable or invalid files,
    for ``NaN`` / ``Infinity`` (not JSON; they would be written back as they are) and for
    a top-level key given twice."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = json.loads(raw, object_hook=object_hook, parse_constant=_refuse_constant)
    except _Constant as e:
        raise LabelfixError(f"{path}: {_where_constant(raw)} is {e}, which is not a JSON number") from None
    except RecursionError:
        raise LabelfixError(f"{path}: invalid JSON: nested too deeply") from None
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
    dup = _top_level_duplicate(raw, data)
    if dup is not None:
        raise LabelfixError(f"{path}: the top-level key {dup!r} appears twice (JSON readers keep only the last)")
    return data


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int_id(value: object, where: str, key: str) -> int:
    # bool is an int subclass in Python; a JSON true/false is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelfixError(f"{where}: '{key}' must be an integer, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise LabelfixError(f"{where}: '{key}' {value} does not fit in a 64-bit integer")
    return value


def _size(value: object, where: str, key: str) -> int:
    """``width`` / ``height``: a non-negative number (0 / null / absent = unknown)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 2**31):
        raise LabelfixError(f"{where}: '{key}' must be a non-negative number, got {value!r}")
    return int(value)


def _records(data: dict, key: str, path: Path, required: bool = True) -> list:
    if key not in data:
        if required:
            raise LabelfixError(f"{path}: missing top-level key '{key}'")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise LabelfixError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    for i, rec in enumerate(value):
        if not isinstance(rec, (dict, _Ann, _Img)):
            raise LabelfixError(f"{path}: {key}[{i}]: expected an object, got {type(rec).__name__}")
    return value


_MISSING = object()


class _Ann(tuple):
    """An annotation slimmed while parsing: ``(image_id, category_id)`` (boxes and
    polygons, which the reader does not use, are dropped as soon as they are parsed)."""

    __slots__ = ()


class _Img(tuple):
    """An image record slimmed while parsing: ``(id, file_name, width, height,
    neg_category_ids, not_exhaustive_category_ids)``, ``_MISSING`` for absent keys."""

    __slots__ = ()


def _slim(d: dict):
    """``json`` object hook: annotation and image records become small tuples, so a
    million-image file does not keep a dict per record alive (other objects unchanged)."""
    if "image_id" in d and "category_id" in d and "file_name" not in d and "name" not in d:
        return _Ann((d["image_id"], d["category_id"]))
    if "id" in d and "file_name" in d and "name" not in d and "image_id" not in d:
        g = d.get
        return _Img((d["id"], d["file_name"], g("width"), g("height"),
                     g("neg_category_ids", _MISSING), g("not_exhaustive_category_ids", _MISSING)))
    return d


def load_coco_records(path: Path) -> dict:
    """:func:`load_json` for the reader: the same one-line errors, with slimmed
    annotation / image records (see :func:`_slim`)."""
    return load_json(path, object_hook=_slim)


def _image_tuple(rec, where: str) -> tuple:
    if isinstance(rec, _Img):
        return rec
    if isinstance(rec, _Ann):  # slimmed as an annotation: it has no file_name
        raise LabelfixError(f"{where}: missing key 'file_name'")
    for key in ("id", "file_name"):  # a dict reaches here only when a key is missing
        if key not in rec:
            raise LabelfixError(f"{where}: missing key '{key}'")
    g = rec.get
    return (rec["id"], rec["file_name"], g("width"), g("height"), g("neg_category_ids", _MISSING),
            g("not_exhaustive_category_ids", _MISSING))


def _ann_tuple(rec, where: str) -> tuple:
    if isinstance(rec, _Ann):
        return rec
    if isinstance(rec, _Img):
        raise LabelfixError(f"{where}: missing key 'image_id'")
    for key in ("image_id", "category_id"):
        if key not in rec:
            raise LabelfixError(f"{where}: missing key '{key}'")
    return rec["image_id"], rec["category_id"]


def _first_dup(ids: np.ndarray) -> int | None:
    """Index of the first element of ``ids`` equal to an earlier one, or None."""
    if len(ids) < 2:
        return None
    order = np.argsort(ids, kind="stable")
    same = ids[order[1:]] == ids[order[:-1]]
    return int(order[1:][same].min()) if same.any() else None


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` in ``sorted_ids`` and a mask of values found there."""
    pos = np.searchsorted(sorted_ids, values)
    pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = sorted_ids[pos] == values if len(sorted_ids) else np.zeros(len(values), bool)
    return pos, found


class _Parsed:
    """The validated content of a COCO file as arrays (see :func:`_validate`)."""

    def __init__(self, cats, cat_order, img_ids, file_names, widths, heights, lvis, neg_rows, neg_cols,
                 ann_rows, ann_cols):
        self.cats, self.cat_order = cats, cat_order
        self.img_ids, self.file_names, self.widths, self.heights = img_ids, file_names, widths, heights
        self.lvis, self.neg_rows, self.neg_cols, self.ann_rows, self.ann_cols = lvis, neg_rows, neg_cols, ann_rows, ann_cols


def _validate(data: dict, path: Path) -> _Parsed:
    """Check the records and return them as arrays: categories sorted by id; image ids,
    file names and sizes in file order; (row, column) pairs of verified negatives
    (LVIS ``neg_category_ids``) and of annotations."""
    images = _records(data, "images", path)
    cats = _records(data, "categories", path)
    anns = _records(data, "annotations", path, required=False)
    if not cats:
        raise LabelfixError(f"{path}: 'categories' is empty; at least one class is needed")
    cat_ids = np.empty(len(cats), np.int64)
    names = []
    for i, c in enumerate(cats):
        where = f"{path}: categories[{i}]"
        if not isinstance(c, dict):
            raise LabelfixError(f"{where}: missing key 'name'")
        for key in ("id", "name"):
            if key not in c:
                raise LabelfixError(f"{where}: missing key '{key}'")
        cat_ids[i] = _int_id(c["id"], where, "id")
        if not isinstance(c["name"], str) or not c["name"]:
            raise LabelfixError(f"{where}: 'name' must be a non-empty string")
        names.append(c["name"])
    dup = _first_dup(cat_ids)
    if dup is not None:
        raise LabelfixError(f"{path}: categories[{dup}]: duplicate category id {cat_ids[dup]}")
    from labelfix.validation import check_class_names

    check_class_names(names, str(path), record=lambda j: f"categories[{j}] (id {cat_ids[j]})")
    cat_order = np.argsort(cat_ids, kind="stable")
    sorted_cats = cat_ids[cat_order]

    n = len(images)
    img_ids = np.empty(n, np.int64)
    widths = np.zeros(n, np.int64)
    heights = np.zeros(n, np.int64)
    file_names: list[str] = [""] * n
    # (row, category id) of every LVIS list entry, validated together after the loop
    lists: dict[str, tuple[list[int], list[int]]] = {"neg_category_ids": ([], []),
                                                     "not_exhaustive_category_ids": ([], [])}
    lvis = False
    for i, rec in enumerate(images):
        where = f"{path}: images[{i}]"
        iid, fname, w, h, neg, nex = _image_tuple(rec, where)
        img_ids[i] = _int_id(iid, where, "id")
        where = f"{where} (id {iid})"
        file_names[i] = check_file_name(fname, where)
        widths[i] = _size(w, where, "width")
        heights[i] = _size(h, where, "height")
        for key, ids in (("neg_category_ids", neg), ("not_exhaustive_category_ids", nex)):
            if ids is _MISSING:
                continue
            lvis = True
            if not isinstance(ids, list):
                raise LabelfixError(f"{where}: '{key}' must be a list")
            for c in ids:
                _int_id(c, where, key)
            rows, vals = lists[key]
            rows.extend([i] * len(ids))
            vals.extend(ids)
    dup = _first_dup(img_ids)
    if dup is not None:
        raise LabelfixError(f"{path}: images[{dup}]: duplicate image id {img_ids[dup]}")
    twice = pd.Series(file_names).duplicated().to_numpy()   # as the reader spells them: ./a.png is a.png
    if twice.any():
        i = int(np.argmax(twice))
        j = file_names.index(file_names[i])
        raise LabelfixError(f"{path}: images[{i}] (id {img_ids[i]}): file_name {file_names[i]!r} is also images[{j}] "
                            f"(id {img_ids[j]}): one image file listed twice (its labels would be two rows that "
                            f"disagree or repeat); merge the two records")
    for key, (rows, vals) in lists.items():
        found = _lookup(sorted_cats, np.array(vals, np.int64))[1]
        if not found.all():
            j = int(np.argmin(found))
            raise LabelfixError(f"{path}: images[{rows[j]}] (id {img_ids[rows[j]]}): '{key}' names unknown "
                                f"category id {vals[j]}")
    neg_r, neg_c = lists["neg_category_ids"]

    m = len(anns)
    a_img = np.empty(m, np.int64)
    a_cat = np.empty(m, np.int64)
    for i, rec in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        iid, cid = _ann_tuple(rec, where)
        a_img[i] = _int_id(iid, where, "image_id")
        a_cat[i] = _int_id(cid, where, "category_id")
    img_order = np.argsort(img_ids, kind="stable")
    r_pos, r_ok = _lookup(img_ids[img_order], a_img)
    c_pos, c_ok = _lookup(sorted_cats, a_cat)
    bad = ~(r_ok & c_ok)
    if bad.any():
        i = int(np.argmax(bad))
        what = f"unknown image_id {a_img[i]}" if not r_ok[i] else f"unknown category_id {a_cat[i]}"
        raise LabelfixError(f"{path}: annotations[{i}]: {what}")
    neg_cols = _lookup(sorted_cats, np.array(neg_c, np.int64))[0]
    return _Parsed(
        [names[j] for j in cat_order], sorted_cats, img_ids, file_names, widths, heights, lvis,
        np.array(neg_r, np.int64), neg_cols, img_order[r_pos] if m else np.empty(0, np.int64), c_pos,
    )


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
    return coco_labelset(load_coco_records(path), path, images, unlabeled)


def coco_labelset(data: dict, path: str | Path, images: str | Path | None = None,
                  unlabeled: str | None = None) -> LabelSet:
    """:func:`read_coco` of a COCO dict already loaded from ``path`` (by :func:`load_json`
    or :func:`load_coco_records`; ``path`` names the file in messages and is where a
    relative image folder starts). The caller's reference keeps ``data`` in memory; pass it
    as an expression to let it go before the label matrix is built."""
    path = Path(path)
    parsed = _validate(data, path)
    lvis = parsed.lvis
    meta = data.get("labelfix", {})
    if not isinstance(meta, dict):   # its unlabeled / image_root would be ignored
        raise LabelfixError(f"{path}: labelfix: expected an object such as {{\"unlabeled\": \"unknown\"}}, "
                            f"got {type(meta).__name__}")
    del data  # the records are in ``parsed`` now; free the parsed JSON before the label matrix
    if unlabeled is None:
        unlabeled = meta.get("unlabeled") or ("unknown" if lvis else "negative")
    if not isinstance(unlabeled, str) or unlabeled not in UNLABELED_CHOICES:
        raise LabelfixError(f"{path}: unlabeled must be one of {UNLABELED_CHOICES}, got {unlabeled!r}")
    root_meta = meta.get("image_root")
    if root_meta is not None and (not isinstance(root_meta, str) or "\x00" in root_meta):
        raise LabelfixError(f"{path}: labelfix.image_root must be a folder path, got {root_meta!r}")

    classes = pd.DataFrame({"name": parsed.cats, "category_id": parsed.cat_order})
    frame = pd.DataFrame(
        {
            "image_id": parsed.img_ids,
            "file_name": parsed.file_names,
            "width": parsed.widths,
            "height": parsed.heights,
        }
    )
    default = UNK if (unlabeled == "unknown") else NEG
    labels = np.full((len(frame), len(classes)), default, dtype=np.int8)
    if lvis:
        labels[parsed.neg_rows, parsed.neg_cols] = NEG
    labels[parsed.ann_rows, parsed.ann_cols] = POS
    conflicts = _lvis_conflicts(parsed, labels, path)
    verified = _verified_cells(meta.get("verified"), parsed, path)

    if images is None and root_meta:
        images = root_meta  # files written by labelfix into another folder
    root = default_image_root(path, images)
    source = {"path": str(path.resolve()), "format": "coco", "unlabeled": unlabeled, "lvis": lvis}
    if conflicts:
        source["lvis_conflicts"] = conflicts
    return LabelSet(labels, frame, classes, root, source, verified)


def _lvis_conflicts(parsed: _Parsed, labels: np.ndarray, path: Path) -> int:
    """LVIS ``neg_category_ids`` entries naming a category that is also annotated on the
    same image. The annotation wins (the cell is positive: an annotation is direct
    evidence, and LVIS verifies negatives image by image, so a contradiction is an error
    in the negative list). A documented skip with a count: one ``note:`` line
    (:class:`LabelfixWarning`) and ``source["lvis_conflicts"]``."""
    if not len(parsed.neg_rows):
        return 0
    hit = labels[parsed.neg_rows, parsed.neg_cols] == POS
    if not hit.any():
        return 0
    pairs = np.unique(parsed.neg_rows[hit] * labels.shape[1] + parsed.neg_cols[hit])
    j = int(np.argmax(hit))
    r = int(parsed.neg_rows[j])
    warnings.warn(LabelfixWarning(
        f"{path}: {len(pairs)} neg_category_ids entr{'y names' if len(pairs) == 1 else 'ies name'} a category "
        f"annotated on the same image (first: images[{r}] (id {parsed.img_ids[r]}), category id "
        f"{parsed.cat_order[int(parsed.neg_cols[j])]}); the annotation wins: those cells are positive"),
        stacklevel=3)
    return int(len(pairs))


def _verified_cells(pairs, parsed: _Parsed, path: Path) -> np.ndarray | None:
    """``labelfix.verified`` (``[[image_id, category_id], ...]``, written by ``labelfix
    export coco``) as bool (N, K); one clear line for a malformed entry or an unknown id."""
    if pairs is None:
        return None
    if not isinstance(pairs, list):
        raise LabelfixError(f"{path}: labelfix.verified must be a list of [image_id, category_id] pairs")
    img = np.empty(len(pairs), np.int64)
    cat = np.empty(len(pairs), np.int64)
    for j, pair in enumerate(pairs):
        where = f"{path}: labelfix.verified[{j}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise LabelfixError(f"{where}: expected [image_id, category_id], got {pair!r}")
        img[j] = _int_id(pair[0], where, "image_id")
        cat[j] = _int_id(pair[1], where, "category_id")
    img_order = np.argsort(parsed.img_ids, kind="stable")
    r_pos, r_ok = _lookup(parsed.img_ids[img_order], img)
    c_pos, c_ok = _lookup(parsed.cat_order, cat)
    bad = ~(r_ok & c_ok)
    if bad.any():
        j = int(np.argmax(bad))
        what = f"unknown image id {img[j]}" if not r_ok[j] else f"unknown category id {cat[j]}"
        raise LabelfixError(f"{path}: labelfix.verified[{j}]: {what}")
    out = np.zeros((len(parsed.img_ids), len(parsed.cat_order)), dtype=bool)
    out[img_order[r_pos], c_pos] = True
    return out
