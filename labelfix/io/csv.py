"""CSV label readers.

- wide: a ``file_name`` column (optional ``image_id``, ``width``, ``height``) and one column
  per class with values ``1`` (positive), ``0`` (negative) or empty (unknown); columns that
  are neither (a patient's age, a view name) are named in ``ignore_columns``;
- either: ``file_column`` names the image column when it is not called ``file_name``
  (CheXpert's ``Path``);
- long: columns ``file_name``, ``label``, ``value`` (``1`` or ``0``); an (image, class)
  pair without a row is unknown.
Classes get category ids 1..K in column order (wide) or in sorted name order (long).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, first_line
from labelfix.io.paths import check_file_name, default_image_root
from labelfix.labels import NEG, POS, UNK, LabelSet

IMAGE_META = ("file_name", "image_id", "width", "height")
#: a label cell as written (stripped; true / false in any case: a spreadsheet's booleans)
_VALUES = {"1": POS, "1.0": POS, "true": POS, "0": NEG, "0.0": NEG, "false": NEG, "": UNK, "-1": UNK, "-1.0": UNK}


def raw_header(path: Path) -> list[str]:
    """The header fields as written (pandas renames duplicate and empty names)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh, skipinitialspace=True), [])


def _refuse_short_rows(path: Path, width: int) -> None:
    """A row shorter than the header is an error, as a longer one is (pandas fills the
    missing fields with empty strings, which read as unknown cells)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = (row for row in csv.reader(fh, skipinitialspace=True) if row)   # pandas skips blank lines too
        next(rows, None)
        for i, row in enumerate(rows, start=1):
            if len(row) < width:
                raise LabelfixError(f"{path}: data row {i}: {len(row)} field(s), the header has {width}; give every "
                                    f"column (an empty field is allowed)")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV as strings with one-line errors; refuses duplicate column names."""
    try:
        # index_col=False: rows longer than the header are an error, not silently
        # re-read with their first fields as the index (which shifts every column)
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.ParserWarning as e:
        raise LabelfixError(f"{path}: cannot parse CSV: a row has more fields than the header ({e})") from None
    except FileNotFoundError:
        raise LabelfixError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise LabelfixError(f"{path}: empty CSV file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        raise LabelfixError(f"{path}: cannot parse CSV: {first_line(e)}") from None
    header = raw_header(path)
    seen: set[str] = set()
    for name in header:
        if name in seen and name.strip():
            raise LabelfixError(f"{path}: header: column {name!r} appears twice")
        seen.add(name)
    table = table.fillna("")
    if len(table.columns) and (table.iloc[:, -1] == "").any():   # a short row leaves its last field empty
        _refuse_short_rows(path, len(header))
    table.attrs["raw_header"] = header
    return table


def _int64(text: str) -> int | None:
    """``text`` as an int64, or None when it is not a decimal integer in range."""
    t = text.strip()
    if not t.lstrip("+-").isdigit() or not t.isascii():
        return None
    v = int(t)
    return v if -(2**63) <= v < 2**63 else None


def _sizes(values: pd.Series, path: Path, col: str) -> np.ndarray:
    """``width`` / ``height``: empty (unknown, 0) or a non-negative number below 2**31,
    as for COCO files; anything else (text, a negative number, 1e30, inf, nan) is refused
    with the row."""
    text = values.astype(str).str.strip()
    nums = pd.to_numeric(text.where(text != "", "0"), errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(nums) & (nums >= 0) & (nums < 2**31))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelfixError(f"{path}: row {i + 2}: {col} {values.iat[i]!r} must be empty or a non-negative number "
                            f"below 2**31")
    return nums.astype(np.int64)


def _image_frame(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    names = [check_file_name(f, f"{path}: row {i + 2}") for i, f in enumerate(table["file_name"])]
    frame = pd.DataFrame({"file_name": names})
    if "image_id" in table:
        ids = [_int64(v) for v in table["image_id"]]
        bad = next((i for i, v in enumerate(ids) if v is None), None)
        if bad is not None:
            raise LabelfixError(f"{path}: row {bad + 2}: image_id {table['image_id'].iat[bad]!r} is not an integer in the 64-bit range")
        frame["image_id"] = np.array(ids, dtype=np.int64)
    else:
        frame["image_id"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    for col in ("width", "height"):
        frame[col] = _sizes(table[col], path, col) if col in table else np.zeros(len(frame), np.int64)
    dup = frame["image_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: duplicate image_id {frame['image_id'].iat[i]}")
    return frame[["image_id", "file_name", "width", "height"]]


def _columns(table: pd.DataFrame) -> str:
    return ", ".join(map(str, table.columns))


def _with_file_column(table: pd.DataFrame, path: Path, file_column: str) -> pd.DataFrame:
    """``table`` with its image column (``--file-column``, matched with surrounding spaces
    ignored) called ``file_name``; the column must exist, and a second column called
    ``file_name`` is refused (which one holds the images would be a guess)."""
    if file_column == "file_name":
        return table
    named = [c for c in table.columns if str(c).strip() == file_column]
    if not named:
        raise LabelfixError(f"{path}: --file-column {file_column!r}: the header has no such column "
                            f"(columns: {_columns(table)})")
    if any(str(c).strip() == "file_name" for c in table.columns):
        raise LabelfixError(f"{path}: --file-column {file_column!r}: the file has a 'file_name' column too; "
                            f"rename one of them, or skip it with --ignore-column file_name")
    out = table.rename(columns={named[0]: "file_name"})
    out.attrs = dict(table.attrs)
    return out


def _missing_file_column(path: Path, table: pd.DataFrame) -> LabelfixError:
    from labelfix.validation import separator_in

    sep = separator_in([str(c) for c in table.columns])
    if sep:   # a spreadsheet in a ';' locale, or a TSV
        return LabelfixError(f"{path}: missing column 'file_name': the header is one column separated by {sep}; save "
                             f"the file as comma-separated CSV")
    return LabelfixError(f"{path}: missing column 'file_name' (the image files; --file-column NAME names "
                         f"another column)")


def _ignored_columns(table: pd.DataFrame, path: Path, ignore_columns: Sequence[str], file_column: str) -> set[str]:
    """The names of ``ignore_columns`` (``--ignore-column``, surrounding spaces ignored),
    each a column of the header other than the image column: a name that matches nothing
    is refused, not ignored."""
    if isinstance(ignore_columns, str):   # "Sex" would be three names, S, e and x
        raise LabelfixError(f"{path}: ignore_columns {ignore_columns!r}: expected a list of column names, got "
                            f"one string")
    ignored = {str(c).strip() for c in ignore_columns}
    missing = sorted(ignored - {str(c).strip() for c in table.columns})
    if missing:
        raise LabelfixError(f"{path}: --ignore-column {missing[0]!r}: the header has no such column "
                            f"(columns: {_columns(table)})")
    if file_column in ignored:
        raise LabelfixError(f"{path}: --ignore-column {file_column!r}: the image column cannot be ignored")
    return ignored


def _without(table: pd.DataFrame, ignored: set[str]) -> pd.DataFrame:
    """``table`` without the columns named in ``ignored`` (their values are never read:
    an ignored ``width`` may hold anything)."""
    if not ignored:
        return table
    out = table.drop(columns=[c for c in table.columns if str(c).strip() in ignored])
    out.attrs = {k: v for k, v in table.attrs.items() if k != "raw_header"}   # no longer column for column
    return out


def _source(path: Path, fmt: str, file_column: str, ignored: set[str] = frozenset()) -> dict:
    """The LabelSet's ``source`` record: the file, its format and the reading options given."""
    source = {"path": str(path.resolve()), "format": fmt}
    if file_column != "file_name":
        source["file_column"] = file_column
    if ignored:
        source["ignore_columns"] = sorted(ignored)
    return source


def read_csv_wide(path: str | Path, images: str | Path | None = None, ignore_columns: Sequence[str] = (),
                  file_column: str | None = None) -> LabelSet:
    """A wide CSV (module docstring); ``ignore_columns``: header names of columns that are
    not classes (metadata such as CheXpert's ``Sex`` or ``AP/PA``), skipped; each must exist.
    ``file_column``: the image column (default ``file_name``). Both are recorded in
    ``source``."""
    path = Path(path)
    file_column = (file_column or "file_name").strip()
    table = read_table(path)
    ignored = _ignored_columns(table, path, ignore_columns, file_column)
    header = table.attrs.get("raw_header", [])
    if len(header) == len(table.columns):
        for raw, col in zip(header, table.columns):
            if col not in IMAGE_META and str(col).strip() not in ignored and not raw.strip():
                raise LabelfixError(f"{path}: header: a class column has an empty name")
    table = _with_file_column(_without(table, ignored), path, file_column)
    if "file_name" not in table:
        raise _missing_file_column(path, table)
    meta = ", ".join((file_column, *IMAGE_META[1:]))   # the image columns as the file names them
    class_cols = [c for c in table.columns if c not in IMAGE_META]
    if not class_cols:
        raise LabelfixError(f"{path}: no class columns (every column besides {meta} and those of --ignore-column "
                            f"is a class)")
    frame = _image_frame(table, path)
    dup = frame["file_name"].duplicated()   # as the reader spells them: ./a.png is a.png
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        j = int(np.flatnonzero((frame["file_name"] == frame["file_name"].iat[i]).to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: duplicate {file_column} {table['file_name'].iat[i]!r} (the image of "
                            f"row {j + 2})")
    values = table[class_cols].apply(lambda s: s.str.strip())
    coded = values.apply(lambda s: s.str.lower().map(_VALUES))
    bad = coded.isna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise LabelfixError(
            f"{path}: row {r + 2}, column {class_cols[c]!r}: value {values.iat[r, c]!r} is not 1, 0 or unknown "
            f"(empty or -1); every column besides {meta} is a class (--ignore-column NAME skips one that is not)"
        )
    labels = coded.to_numpy(np.int8)
    from labelfix.validation import check_class_names

    check_class_names([str(c) for c in class_cols], f"{path}: header", record=lambda j: f"column {class_cols[j]!r}")
    classes = pd.DataFrame({"name": class_cols, "category_id": np.arange(1, len(class_cols) + 1, dtype=np.int64)})
    return LabelSet(labels, frame, classes, default_image_root(path, images),
                    _source(path, "csv-wide", file_column, ignored))


def _check_image_rows_agree(table: pd.DataFrame, path: Path) -> None:
    """A long CSV repeats an image's own columns (``image_id``, ``width``, ``height``) on
    each of its rows: they must agree (the first row's would be kept, the others dropped
    silently). One line naming both rows."""
    for col in ("image_id", "width", "height"):
        if col not in table:
            continue
        vals = table[col].str.strip()
        if col != "image_id":   # "48" and "48.0" agree, as do "" and "0" (unknown)
            vals = pd.to_numeric(vals.replace("", "0"), errors="coerce").fillna(-1)
        other = (vals != vals.groupby(table["file_name"], sort=False).transform("first")).to_numpy()
        if other.any():
            i = int(np.flatnonzero(other)[0])
            j = int(np.flatnonzero((table["file_name"] == table["file_name"].iat[i]).to_numpy())[0])
            raise LabelfixError(f"{path}: row {i + 2}: {col} {table[col].iat[i]!r} for {table['file_name'].iat[i]}, "
                                f"whose row {j + 2} has {table[col].iat[j]!r}")


#: the columns of a long CSV besides the image column (module docstring)
LONG_COLUMNS = ("label", "value", "image_id", "width", "height")


def read_csv_long(path: str | Path, images: str | Path | None = None, file_column: str | None = None,
                  ignore_columns: Sequence[str] = ()) -> LabelSet:
    """A long CSV (module docstring); ``file_column``: the image column (default
    ``file_name``); ``ignore_columns``: other columns (an annotator, a split), which are
    refused unless named here. Both are recorded in ``source``."""
    path = Path(path)
    file_column = (file_column or "file_name").strip()
    table = read_table(path)
    ignored = _ignored_columns(table, path, ignore_columns, file_column)
    own = sorted(ignored & {"label", "value"})
    if own:
        raise LabelfixError(f"{path}: --ignore-column {own[0]!r}: a column of the long format cannot be ignored")
    table = _with_file_column(_without(table, ignored), path, file_column)
    if "file_name" not in table:
        raise _missing_file_column(path, table)
    for col in ("label", "value"):
        if col not in table:
            raise LabelfixError(f"{path}: missing column '{col}'")
    other = [str(c) for c in table.columns if str(c).strip() not in ("file_name", *LONG_COLUMNS)]
    if other:   # never read and never said: a long file's labels are in label / value only
        raise LabelfixError(f"{path}: column(s) {', '.join(map(repr, other))} are not columns of a long CSV "
                            f"({file_column}, {', '.join(LONG_COLUMNS)}); --ignore-column NAME skips one")
    # one image, however its rows spell it (./a.png is a.png)
    table = table.assign(file_name=[check_file_name(f, f"{path}: row {i + 2}") for i, f in enumerate(table["file_name"])])
    value = table["value"].str.strip().str.lower().map(_VALUES)
    bad = value.isna() | (table["value"].str.strip() == "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: value {table['value'].iat[i]!r} is not 1, 0 or -1 (unknown)")
    if (table["label"].str.strip() == "").any():
        i = int(np.flatnonzero((table["label"].str.strip() == "").to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: empty label")
    _check_image_rows_agree(table, path)
    img_table = table.drop_duplicates("file_name").reset_index(drop=True)
    frame = _image_frame(img_table, path)
    names = sorted(table["label"].str.strip().unique())
    rows = pd.Series(np.arange(len(frame)), index=img_table["file_name"]).loc[table["file_name"]].to_numpy()
    cols = pd.Series(np.arange(len(names)), index=names).loc[table["label"].str.strip()].to_numpy()
    pair = pd.Series(rows * len(names) + cols)
    if pair.duplicated().any():
        i = int(np.flatnonzero(pair.duplicated().to_numpy())[0])
        raise LabelfixError(f"{path}: row {i + 2}: second value for ({table['file_name'].iat[i]}, {table['label'].iat[i]})")
    labels = np.full((len(frame), len(names)), UNK, np.int8)
    labels[rows, cols] = value.to_numpy(np.int8)
    classes = pd.DataFrame({"name": names, "category_id": np.arange(1, len(names) + 1, dtype=np.int64)})
    return LabelSet(labels, frame, classes, default_image_root(path, images),
                    _source(path, "csv-long", file_column, ignored))
