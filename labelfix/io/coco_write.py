"""Write a new label matrix back into a user's COCO JSON, changing only what changed.

Used by ``labelfix noise`` (inject noise into a clean file) and ``labelfix export coco``
(apply accepted corrections). Rules (product.md, "Cleaned COCO JSON"):
- info, licenses, images, categories and every annotation whose (image, class) is still
  positive are kept as they were;
- a removed (image, class) loses its annotations and goes into the image's
  ``neg_category_ids``;
- an added (image, class) gets an image-level annotation (no bbox) with
  ``"labelfix": "added"`` — or, when a ``moves`` entry says it came from another class
  of the same image (mislabel noise), the moved annotations with the new category id;
- if any cell is unknown in the new matrix, every image lists its negatives in
  ``neg_category_ids`` and the file records ``"labelfix": {"unlabeled": "unknown"}``;
  otherwise it records ``{"unlabeled": "negative"}``. labelfix's reader honours that
  record, so reading the file back gives exactly the new matrix.
Output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK, LabelSet


def rewrite_coco(
    data: dict,
    labelset: LabelSet,
    new_labels: np.ndarray,
    moves: dict[tuple[int, int], int] | None = None,
    verified: np.ndarray | None = None,
) -> dict:
    """Return a new COCO dict whose labels read back as ``new_labels``.

    Args:
        data: the original COCO dict (not modified).
        labelset: the LabelSet read from ``data`` (row / column order of the matrices).
        new_labels: int8 (N, K) target labels.
        moves: optional ``{(row, old_col): new_col}``: positives relabeled to another
            class, whose annotations (with boxes) move to the new class.
        verified: optional bool (N, K), cells a person verified; recorded as
            ``labelfix.verified`` = ``[[image_id, category_id], ...]`` (sorted), which
            :func:`labelfix.io.coco.read_coco` reads back into ``LabelSet.verified``.
    """
    old = np.asarray(labelset.labels)
    new = np.asarray(new_labels, np.int8)
    moves = moves or {}
    row_of = {int(i): r for r, i in enumerate(labelset.images["image_id"])}
    cat_ids = labelset.classes["category_id"].to_numpy()
    col_of = {int(c): k for k, c in enumerate(cat_ids)}
    has_unknown = bool((new == UNK).any())

    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["labelfix"] = {**(data.get("labelfix") or {}), "unlabeled": "unknown" if has_unknown else "negative"}
    out["labelfix"].pop("verified", None)
    if verified is not None and np.asarray(verified).any():
        image_ids = labelset.images["image_id"].to_numpy()
        rows, cols = np.nonzero(np.asarray(verified))
        pairs = sorted(zip(image_ids[rows].tolist(), cat_ids[cols].tolist()))
        out["labelfix"]["verified"] = [[int(i), int(c)] for i, c in pairs]

    images = []
    for im in data["images"]:
        im = copy.copy(im)
        r = row_of[int(im["id"])]
        removed = np.flatnonzero((old[r] == POS) & (new[r] != POS))
        if has_unknown:
            negs = [int(cat_ids[k]) for k in np.flatnonzero(new[r] == NEG)]
        else:
            # an earlier negative that is now positive (an accepted addition) leaves the list
            now_pos = {int(cat_ids[k]) for k in np.flatnonzero(new[r] == POS)}
            negs = sorted((set(im.get("neg_category_ids", [])) | {int(cat_ids[k]) for k in removed
                                                                    if new[r, k] == NEG}) - now_pos)
        if negs or "neg_category_ids" in im:
            im["neg_category_ids"] = negs
        images.append(im)
    out["images"] = images

    annotations = []
    max_id = 0
    for a in data.get("annotations", []):
        max_id = max(max_id, int(a.get("id", 0)) if isinstance(a.get("id"), int) else 0)
        r, k = row_of[int(a["image_id"])], col_of[int(a["category_id"])]
        if (r, k) in moves and new[r, moves[(r, k)]] == POS:
            a = dict(a)
            a["category_id"] = int(cat_ids[moves[(r, k)]])
            annotations.append(a)
        elif new[r, k] == POS:
            annotations.append(a)
    have = {(row_of[int(a["image_id"])], col_of[int(a["category_id"])]) for a in annotations}
    added_rows, added_cols = np.nonzero((new == POS) & (old != POS))
    next_id = max_id + 1
    for r, k in zip(added_rows.tolist(), added_cols.tolist()):
        if (r, k) in have:
            continue
        annotations.append(
            {
                "id": next_id,
                "image_id": int(labelset.images.at[r, "image_id"]),
                "category_id": int(cat_ids[k]),
                "area": 0.0,
                "iscrowd": 0,
                "labelfix": "added",
            }
        )
        next_id += 1
    out["annotations"] = annotations
    return out


def write_coco(path: str | Path, data: dict) -> None:
    """Write a COCO dict atomically with a stable layout (same dict, same bytes)."""
    atomic.write_text(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")


def labelset_to_coco(labelset: LabelSet) -> dict:
    """A COCO dict with image-level annotations that reads back as ``labelset`` (for label
    sources that are not COCO, so that noise and export can still write COCO)."""
    lab = np.asarray(labelset.labels)
    images = []
    for r, im in enumerate(labelset.images.itertuples()):
        # COCO requires the sizes; CSV and Open Images files have none: from the file's header (0: unreadable)
        w, h = labelset.image_size(r) or (0, 0)
        rec = {"id": int(im.image_id), "file_name": str(im.file_name), "width": w, "height": h}
        negs = labelset.classes["category_id"].to_numpy()[lab[r] == NEG]
        if (lab == UNK).any():
            rec["neg_category_ids"] = [int(c) for c in negs]
        images.append(rec)
    rows, cols = np.nonzero(lab == POS)
    cat_ids = labelset.classes["category_id"].to_numpy()
    img_ids = labelset.images["image_id"].to_numpy()
    annotations = [
        {"id": n + 1, "image_id": int(img_ids[r]), "category_id": int(cat_ids[k]), "area": 0.0, "iscrowd": 0}
        for n, (r, k) in enumerate(zip(rows.tolist(), cols.tolist()))
    ]
    return {
        "info": {"description": f"converted by labelfix from {labelset.source.get('format', 'labels')}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(c.category_id), "name": str(c.name)} for c in labelset.classes.itertuples()],
        "labelfix": {"unlabeled": "unknown" if (lab == UNK).any() else "negative"},
    }


def source_coco(labelset: LabelSet) -> dict:
    """The user's original COCO dict for a LabelSet read from COCO, else a conversion."""
    from labelfix.io.coco import load_json

    if labelset.source.get("format") == "coco" and labelset.source.get("path"):
        return load_json(Path(labelset.source["path"]))
    return labelset_to_coco(labelset)


def with_image_root(data: dict, labelset: LabelSet) -> dict:
    """Record the image folder in the file, so a copy written elsewhere still finds the images."""
    if labelset.image_root is not None:
        data = dict(data)
        data["labelfix"] = {**(data.get("labelfix") or {}), "image_root": str(labelset.image_root)}
    return data
