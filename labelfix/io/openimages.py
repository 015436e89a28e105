"""Open Images style human-verified image labels.

Labels file: columns ``ImageID``, ``LabelName``, ``Confidence`` (1 positive, 0 negative;
other columns such as ``Source`` are ignored). Class descriptions (``--classes``): two
columns ``LabelName,DisplayName`` with or without a header. Every class not verified
on an image is unknown. Image files are ``<ImageID>.jpg`` under the image root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, first_line
from labelfix.io.csv import read_table
from labelfix.io.paths import check_file_name, default_image_root
from labelfix.labels import UNK, LabelSet

REQUIRED = ("ImageID", "LabelName", "Confidence")


def read_class_descriptions(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
    except FileNotFoundError:
        raise LabelfixError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LabelfixError(f"{path}: cannot parse class descriptions: {first_line(e)}") from None
    if table.shape[1] < 2:
        raise LabelfixError(f"{path}: expected two columns LabelName,DisplayName")
    header = table.iat[0, 0] == "LabelName"
    if header:
        table = table.iloc[1:]
    table = table.iloc[:, :2].set_axis(["LabelName", "DisplayName"], axis=1).reset_index(drop=True)
    if table.empty:
        raise LabelfixError(f"{path}: no classes")
    if table["LabelName"].duplicated().any():
        i = int(np.flatnonzero(table["LabelName"].duplicated().to_numpy())[0])
        raise LabelfixError(f"{path}: duplicate LabelName {table['LabelName'].iat[i]!r}")
    from labelfix.validation import check_class_names

    first = 2 if header else 1
    check_class_names(table["DisplayName"].tolist(), str(path),
                      record=lambda i: f"row {i + first} ({table['LabelName'].iat[i]})")
    return table


def read_openimages(
    path: str | Path, images: str | Path | None = None, class_descriptions: str | Path | None = None
) -> LabelSet:
    path = Path(path)
    table = read_table(path)
    for col in REQUIRED:
        if col not in table:
            raise LabelfixError(f"{path}: missing column '{col}'")
    for col in ("ImageID", "LabelName"):
        empty = table[col].str.strip() == ""
        if empty.any():
            raise LabelfixError(f"{path}: row {int(np.flatnonzero(empty.to_numpy())[0]) + 2}: empty {col}")
    conf = table["Confidence"].str.strip()
    bad = ~conf.isin(["0", "1", "0.0", "1.0"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: Confidence {table['Confidence'].iat[i]!r} is not 1 or 0")
    if class_descriptions is not None:
        desc = read_class_descriptions(Path(class_descriptions))
        unknown = ~table["LabelName"].isin(desc["LabelName"])
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise LabelfixError(f"{path}: row {i + 2}: LabelName {table['LabelName'].iat[i]!r} is not in {class_descriptions}")
    else:
        names = sorted(table["LabelName"].unique())
        desc = pd.DataFrame({"LabelName": names, "DisplayName": names})
    image_ids = table["ImageID"].drop_duplicates().reset_index(drop=True)
    file_names = [check_file_name(f"{i}.jpg", f"{path}: ImageID {i!r}") for i in image_ids]
    rows = pd.Series(np.arange(len(image_ids)), index=image_ids).loc[table["ImageID"]].to_numpy()
    cols = pd.Series(np.arange(len(desc)), index=desc["LabelName"]).loc[table["LabelName"]].to_numpy()
    pair = pd.Series(rows * len(desc) + cols)
    if pair.duplicated().any():
        i = int(np.flatnonzero(pair.duplicated().to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: second verification of ({table['ImageID'].iat[i]}, {table['LabelName'].iat[i]})")
    labels = np.full((len(image_ids), len(desc)), UNK, np.int8)
    labels[rows, cols] = conf.astype(float).astype(np.int8).to_numpy()
    frame = pd.DataFrame(
        {
            "image_id": np.arange(1, len(image_ids) + 1, dtype=np.int64),
            "file_name": file_names,
            "width": np.zeros(len(image_ids), np.int64),
            "height": np.zeros(len(image_ids), np.int64),
        }
    )
    classes = pd.DataFrame(
        {
            "name": desc["DisplayName"].tolist(),
            "category_id": np.arange(1, len(desc) + 1, dtype=np.int64),
            "label_name": desc["LabelName"].tolist(),
        }
    )
    source = {"path": str(path.resolve()), "format": "openimages"}
    return LabelSet(labels, frame, classes[["name", "category_id"]], default_image_root(path, images), source)
