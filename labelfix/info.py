"""Dataset summary behind ``labelfix info``."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    #: files that exist but are not image files labelfix reads: a FIFO, a device, a
    #: symbolic link leading outside the image folder ("file: reason"); skipped like
    #: undecodable images
    unreadable_files: list[str] = field(default_factory=list)

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
            "unreadable_files": self.unreadable_files,
            "classes": self.per_class.to_dict(orient="records"),
        }


def dataset_info(labelset: LabelSet, check_files: bool = True, verify: bool = False) -> DatasetInfo:
    """Counts per class, imbalance ratios (methods.md), missing image files and, with
    ``verify``, images that fail to decode."""
    counts = labelset.counts()
    imb = imbalance(counts)
    missing: list[str] = []
    corrupt: list[str] | None = None
    unreadable: list[str] = []
    if check_files:
        from labelfix.data.image import image_problem

        problems = [image_problem(labelset.image_path(i), labelset.image_root) for i in range(labelset.num_images)]
        names = labelset.images["file_name"].astype(str).tolist()
        missing = [f for f, p in zip(names, problems) if p == "missing"]
        unreadable = [f"{f}: {p}" for f, p in zip(names, problems) if p not in (None, "missing")]
        exists = [p is None for p in problems]
        if verify:
            from labelfix.data.image import DECODE_ERRORS, load_rgb

            corrupt = []
            for i, ok in enumerate(exists):
                if not ok:
                    continue
                try:
                    load_rgb(labelset.image_path(i), labelset.image_root)
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
        unreadable,
    )
