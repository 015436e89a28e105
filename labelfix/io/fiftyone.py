"""Reader for an existing FiftyOne dataset with a Classifications field.

Path syntax: ``fiftyone://DATASET[/FIELD]``. Label states:
- a class is positive on a sample when the field (``Classifications`` or a single
  ``Classification``) holds a label with that name;
- with a negatives field (``negatives`` by default, when the dataset has one; it is
  what ``labelfix review`` writes) its labels are verified negatives and, by default,
  every other cell is unknown (like an LVIS file); a class both positive and negative
  on a sample counts as positive;
- without one the labels are exhaustive: other classes are negative, or unknown with
  ``unlabeled="unknown"``.
Classes: ``dataset.classes[FIELD]``, else ``dataset.default_classes``, else the sorted
label names found; category ids 1..K in that order. Images: the sample's ``image_id``
field when the dataset has an integer one (as written by ``labelfix review``), else
1..N in dataset order; file names are relative to the folder that holds all images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS, UNK, LabelSet

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # see labelfix/review/__init__.py

SCHEME = "fiftyone://"
DEFAULT_FIELD = "ground_truth"
DEFAULT_NEGATIVES = "negatives"


def is_fiftyone_uri(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def parse_uri(uri: str) -> tuple[str, str | None]:
    """``fiftyone://NAME[/FIELD]`` -> ``(NAME, FIELD or None)``. The field is the part
    after the last ``/`` unless the whole rest names an existing dataset."""
    if not is_fiftyone_uri(uri):
        raise LabelfixError(f"{uri}: expected fiftyone://DATASET[/FIELD]")
    rest = uri[len(SCHEME):].strip("/")
    if not rest:
        raise LabelfixError(f"{uri}: no dataset name (expected fiftyone://DATASET[/FIELD])")
    if "/" not in rest:
        return rest, None
    import fiftyone as fo

    if fo.dataset_exists(rest):
        return rest, None
    name, field = rest.rsplit("/", 1)
    return name, field


def _label_field_type(dataset, field: str, uri: str) -> str:
    import fiftyone as fo

    schema = dataset.get_field_schema()
    if field not in schema:
        raise LabelfixError(f"{uri}: dataset {dataset.name!r} has no field {field!r}")
    doc = getattr(schema[field], "document_type", None)
    if doc is fo.Classifications:
        return "classifications"
    if doc is fo.Classification:
        return "classification"
    raise LabelfixError(f"{uri}: field {field!r} is not a Classification(s) field")


def _default_field(dataset, uri: str) -> str:
    import fiftyone as fo

    schema = dataset.get_field_schema()
    if DEFAULT_FIELD in schema:
        return DEFAULT_FIELD
    found = [f for f, v in schema.items()
             if getattr(v, "document_type", None) in (fo.Classifications, fo.Classification)
             and f not in (DEFAULT_NEGATIVES, "predictions", "suggestions")]
    if len(found) == 1:
        return found[0]
    raise LabelfixError(
        f"{uri}: cannot tell which field holds the labels ({', '.join(found) or 'no Classification(s) fields'}); "
        f"use fiftyone://{dataset.name}/FIELD"
    )


def _names(dataset, field: str, kind: str) -> list[list[str]]:
    path = f"{field}.classifications.label" if kind == "classifications" else f"{field}.label"
    values = dataset.values(path)
    if kind == "classification":
        return [[v] if v is not None else [] for v in values]
    return [[x for x in (v or []) if x is not None] for v in values]


def read_fiftyone(
    uri: str,
    images: str | Path | None = None,
    unlabeled: str | None = None,
    negatives_field: str | None = DEFAULT_NEGATIVES,
) -> LabelSet:
    """Read a FiftyOne dataset's Classification(s) field into a :class:`LabelSet`.

    Args:
        uri: ``fiftyone://DATASET[/FIELD]`` (FIELD default: ``ground_truth``, else the
            only Classification(s) field).
        images: image root folder (default: the deepest folder holding all images).
        unlabeled: ``"negative"`` or ``"unknown"`` for classes a sample does not mention.
            Default: ``"unknown"`` when a negatives field is used, else ``"negative"``.
        negatives_field: field of verified negatives, used when the dataset has it
            (None: ignore negatives).
    """
    from labelfix.io.coco import UNLABELED_CHOICES

    name, field = parse_uri(uri)
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise LabelfixError(f"{uri}: FiftyOne dataset {name!r} not found")
    ds = fo.load_dataset(name)
    if len(ds) == 0:
        raise LabelfixError(f"{uri}: dataset {name!r} has no samples")
    field = field or _default_field(ds, uri)
    kind = _label_field_type(ds, field, uri)
    use_neg = negatives_field is not None and negatives_field != field and ds.has_sample_field(negatives_field)
    if unlabeled is None:
        unlabeled = "unknown" if use_neg else "negative"
    if unlabeled not in UNLABELED_CHOICES:
        raise LabelfixError(f"{uri}: unlabeled must be one of {UNLABELED_CHOICES}, got {unlabeled!r}")

    pos_names = _names(ds, field, kind)
    neg_names = _names(ds, negatives_field, _label_field_type(ds, negatives_field, uri)) if use_neg else None
    classes = list(ds.classes.get(field) or ds.default_classes or [])
    found = sorted({x for v in pos_names for x in v} | ({x for v in neg_names for x in v} if use_neg else set()))
    extra = [c for c in found if c not in set(classes)]
    if classes and extra:
        raise LabelfixError(f"{uri}: label {extra[0]!r} is not in the dataset's class list")
    classes = classes or found
    if not classes:
        raise LabelfixError(f"{uri}: field {field!r} holds no labels")
    from labelfix.validation import check_class_names

    check_class_names(classes, uri, record=lambda i: f"classes[{i}]")
    col = {c: k for k, c in enumerate(classes)}

    filepaths = [os.path.abspath(p) for p in ds.values("filepath")]
    if ds.has_sample_field("image_id") and isinstance(ds.get_field("image_id"), fo.IntField):
        ids = ds.values("image_id")
        if any(i is None for i in ids) or len(set(ids)) != len(ids):
            raise LabelfixError(f"{uri}: field 'image_id' must be set and unique on every sample")
        image_ids = np.array(ids, np.int64)
    else:
        image_ids = np.arange(1, len(filepaths) + 1, dtype=np.int64)
    root = Path(images).resolve() if images is not None else Path(os.path.commonpath([os.path.dirname(p) for p in filepaths]))
    try:
        rel = [Path(p).relative_to(root).as_posix() for p in filepaths]
    except ValueError:
        raise LabelfixError(f"{uri}: some images are not under --images {root}") from None
    widths = ds.values("metadata.width") if ds.has_sample_field("metadata") else [None] * len(ds)
    heights = ds.values("metadata.height") if ds.has_sample_field("metadata") else [None] * len(ds)
    frame = pd.DataFrame({
        "image_id": image_ids,
        "file_name": rel,
        "width": np.array([int(w or 0) for w in widths], np.int64),
        "height": np.array([int(h or 0) for h in heights], np.int64),
    })

    labels = np.full((len(frame), len(classes)), UNK if unlabeled == "unknown" else NEG, np.int8)
    if use_neg:
        for r, names in enumerate(neg_names):
            labels[r, [col[x] for x in names]] = NEG
    for r, names in enumerate(pos_names):
        labels[r, [col[x] for x in names]] = POS
    cls = pd.DataFrame({"name": classes, "category_id": np.arange(1, len(classes) + 1, dtype=np.int64)})
    source = {"path": f"{SCHEME}{name}/{field}", "format": "fiftyone", "dataset": name, "field": field,
              "negatives_field": negatives_field if use_neg else None, "unlabeled": unlabeled}
    return LabelSet(labels, frame, cls, root, source)
