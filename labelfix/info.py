"""Dataset summary behind ``labelfix info``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from labelfix.labels import LabelSet, imbalance


@dataclass
class DatasetInfo:
    num_images: int
    num_classes: int
    per_class: pd.DataFrame  # name, category_id, positives, negatives, unknown
    cls_imb: float
    pn_imb: float
    missing_files: list[str]
    corrupt_files: list[str] | None  # None when images were not decoded
    classes_without_positives: list[str]

    def to_dict(self) -> dict:
        return {
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "positives": int(self.per_class["positives"].sum()),
            "negatives": int(self.per_class["negatives"].sum()),
            "unknown": int(self.per_class["unknown"].sum()),
            "cls_imb": self.cls_imb,
            "pn_imb": self.pn_imb,
            "missing_files": self.missing_files,
            "corrupt_files": self.corrupt_files,
            "classes_without_positives": self.classes_without_positives,
            "classes": self.per_class.to_dict(orient="records"),
        }


def dataset_info(labelset: LabelSet, check_files: bool = True, verify: bool = False) -> DatasetInfo:
    """Counts per class, imbalance ratios (methods.md), missing image files and, with
    ``verify``, images that fail to decode."""
    counts = labelset.counts()
    imb = imbalance(counts)
    missing: list[str] = []
    corrupt: list[str] | None = None
    if check_files:
        exists = [os.path.isfile(labelset.image_path(i)) for i in range(labelset.num_images)]
        missing = [str(f) for f, ok in zip(labelset.images["file_name"], exists) if not ok]
        if verify:
            from labelfix.data.image import DECODE_ERRORS, load_rgb

            corrupt = []
            for i, ok in enumerate(exists):
                if not ok:
                    continue
                try:
                    load_rgb(labelset.image_path(i))
                except DECODE_ERRORS:
                    corrupt.append(str(labelset.images.at[i, "file_name"]))
    no_pos = counts.loc[counts["positives"] == 0, "name"].astype(str).tolist()
    return DatasetInfo(
        labelset.num_images,
        labelset.num_classes,
        counts,
        imb["cls_imb"],
        imb["pn_imb"],
        missing,
        corrupt,
        no_pos,
    )
