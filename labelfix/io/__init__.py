"""Readers and writers. ``read_labels`` is the one entry point for user label files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labelfix.errors import LabelfixError

FORMATS = ("coco", "csv-wide", "csv-long", "openimages", "run", "fiftyone")


def detect_format(path: Path, file_column: str | None = None) -> str:
    """Guess the label format from the file: ``.json`` is COCO, a folder with
    ``labels.npy`` is a labelfix run, a CSV is Open Images / long / wide by its header
    (long: columns ``label`` and ``value`` and no column a long CSV does not have, the
    image column being ``file_column``; with other columns too, one line asks for
    ``--format``)."""
    if path.is_dir():
        if (path / "labels.npy").exists():
            return "run"
        raise LabelfixError(f"{path}: a folder that is not a labelfix run directory (no labels.npy)")
    if not path.exists():
        raise LabelfixError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix in (".csv", ".txt"):
        with open(path, encoding="utf-8-sig", errors="replace") as fh:   # -sig: a BOM is not part of the header
            header = {h.strip() for h in fh.readline().strip().split(",")}
        if {"ImageID", "LabelName", "Confidence"} <= header:
            return "openimages"
        if header == {"file_name", "label"}:   # its reader names the missing 'value' column
            return "csv-long"
        if {"label", "value"} <= header:
            from labelfix.io.csv import IMAGE_META, LONG_COLUMNS

            other = sorted(header - set(LONG_COLUMNS) - set(IMAGE_META) - {file_column or "file_name"})
            if not other:
                return "csv-long"
            # a wide file with classes called label and value, or a long one with more columns
            raise LabelfixError(f"{path}: columns 'label' and 'value' as in a long CSV, and {', '.join(map(repr, other))} "
                                f"as in a wide one: pass --format csv-long (--ignore-column NAME skips a column) or "
                                f"--format csv-wide")
        return "csv-wide"
    raise LabelfixError(f"{path}: cannot tell the label format from the extension '{suffix}'; pass --format")


#: reading options that apply to some formats only: option -> (formats, what the message calls them)
OPTION_FORMATS = {
    "--unlabeled": (("coco", "fiftyone"), "COCO files"),
    "--classes": (("openimages",), "Open Images labels"),
    "--ignore-column": (("csv-wide", "csv-long"), "CSV files"),
    "--file-column": (("csv-wide", "csv-long"), "CSV files"),
}


def _refuse_options_of_other_formats(path, fmt: str, given: dict[str, bool]) -> None:
    """One line for a reading option given (``given``: option -> given) that format
    ``fmt`` does not use (:data:`OPTION_FORMATS`): never accepted and ignored."""
    for option, (formats, what) in OPTION_FORMATS.items():
        if given[option] and fmt not in formats:
            raise LabelfixError(f"{path}: {option} applies to {what} only (format is {fmt})")


def read_labels(
    path: str | Path,
    format: str | None = None,
    images: str | Path | None = None,
    unlabeled: str | None = None,
    class_descriptions: str | Path | None = None,
    ignore_columns: Sequence[str] = (),
    file_column: str | None = None,
):
    """Read user labels into a :class:`labelfix.labels.LabelSet`.

    Args:
        path: COCO/LVIS JSON, CSV (wide or long), Open Images verified labels CSV, a
            labelfix run directory, or ``fiftyone://DATASET[/FIELD]``.
        format: one of :data:`FORMATS`; detected from the file when None.
        images: image root folder (default: the label file's folder).
        unlabeled: COCO and FiftyOne only: ``"negative"`` or ``"unknown"`` for unmentioned classes.
        class_descriptions: Open Images class-description CSV.
        ignore_columns: CSV only: header names of columns that are not classes (wide) or not
            the long format's (long).
        file_column: CSV only (wide or long): the image column when it is not ``file_name``.
    """
    from labelfix.labels import LabelSet

    given = {"--unlabeled": unlabeled is not None, "--classes": class_descriptions is not None,
             "--ignore-column": bool(ignore_columns), "--file-column": bool(file_column)}
    if str(path).startswith("fiftyone://") or format == "fiftyone":
        # a FiftyOne dataset, fiftyone://DATASET[/FIELD] (labelfix.io.fiftyone)
        from labelfix.io.fiftyone import read_fiftyone

        _refuse_options_of_other_formats(path, "fiftyone", given)
        uri = str(path) if str(path).startswith("fiftyone://") else f"fiftyone://{path}"
        return read_fiftyone(uri, images=images, unlabeled=unlabeled)
    path = Path(path)
    fmt = format or detect_format(path, file_column)
    _refuse_options_of_other_formats(path, fmt, given)
    if format in ("csv-wide", "csv-long", "openimages") and path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head[:1] in (b"{", b"["):
            raise LabelfixError(f"{path}: --format {format}: the file is JSON, not CSV; use --format coco "
                                f"(or leave --format out)")
    if fmt == "coco":
        from labelfix.io.coco import read_coco

        return read_coco(path, images=images, unlabeled=unlabeled)
    if fmt == "csv-wide":
        from labelfix.io.csv import read_csv_wide

        return read_csv_wide(path, images=images, ignore_columns=ignore_columns or (), file_column=file_column)
    if fmt == "csv-long":
        from labelfix.io.csv import read_csv_long

        return read_csv_long(path, images=images, file_column=file_column, ignore_columns=ignore_columns or ())
    if fmt == "openimages":
        from labelfix.io.openimages import read_openimages

        return read_openimages(path, images=images, class_descriptions=class_descriptions)
    if fmt == "run":
        if not Path(path).is_dir():
            raise LabelfixError(f"{path}: --format run reads a labelfix run directory, and this is not a folder")
        ls = LabelSet.load(path)
        if images is not None:
            ls.image_root = Path(images).resolve()
        return ls
    raise LabelfixError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
