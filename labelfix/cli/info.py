"""``labelfix info DATA``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from labelfix.cli.options import data_options, read_from_options


def _ratio(value: float) -> str:
    """An imbalance ratio to two decimals; ``n/a`` where it is undefined
    (no class has a positive: CLS_Imb NaN, PN_Imb inf; null in ``--json``)."""
    return f"{value:.2f}" if math.isfinite(value) else "n/a"


#: files named in the text output of each list (--json lists them all)
LISTED = 10


def _listed(files: list[str]) -> str:
    """``"3: a.png, b.png, c.png"``, at most :data:`LISTED` names then how many more."""
    if not files:
        return "0"
    more = f", and {len(files) - LISTED} more (--json lists all)" if len(files) > LISTED else ""
    return f"{len(files)}: " + ", ".join(map(str, files[:LISTED])) + more


@click.command()
@click.argument("data", type=click.Path())
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--verify", is_flag=True, help="Decode every image to find truncated or corrupt files (slow).")
@click.option("--no-files", is_flag=True, help="Do not look for the image files at all.")
def info(data, fmt, images, unlabeled, class_descriptions, ignore_columns, file_column, as_json, verify,
         no_files):
    """What is in a dataset: images, classes, positives / negatives / unknown per class,
    imbalance ratios and missing image files."""
    from labelfix.errors import LabelfixError

    if verify and no_files:
        raise LabelfixError("info: --verify decodes the image files, --no-files skips them: choose one")
    if images is not None and no_files:
        raise LabelfixError("info: --images says where the image files are, --no-files skips them: choose one")
    from labelfix.info import dataset_info
    from labelfix.io import detect_format

    ls = read_from_options(data, fmt, images, unlabeled, class_descriptions, ignore_columns, file_column)
    summary = dataset_info(ls, check_files=not no_files, verify=verify)
    if as_json:
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.to_dict().items()}
        click.echo(json.dumps(d, indent=2, default=int, allow_nan=False))   # JSON has no NaN: null
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    d = summary.to_dict()
    read_as = ls.source.get("format")
    if fmt == "run" or (fmt is None and Path(data).is_dir()):   # a run directory holds the labels of its DATA file
        read_as = f"labelfix run, labels from {read_as}" if read_as else "labelfix run"
    con.print(f"[bold]{data}[/bold] ({read_as}): {d['num_images']} images, {d['num_classes']} classes")
    con.print(
        f"cells: {d['positives']} positive, {d['negatives']} negative, {d['unknown']} unknown; "
        f"CLS_Imb {_ratio(d['cls_imb'])}, PN_Imb {_ratio(d['pn_imb'])}"
        + ("" if d["positives"] else " (no positives)")
    )
    table = Table("class", "category_id", "positives", "negatives", "unknown")
    for r in summary.per_class.itertuples():
        table.add_row(str(r.name), str(r.category_id), str(r.positives), str(r.negatives), str(r.unknown))
    con.print(table)
    if summary.classes_without_positives:
        con.print(f"[yellow]{len(summary.classes_without_positives)} classes have no positives:[/yellow] "
                  + ", ".join(summary.classes_without_positives[:20]))
    if not no_files:
        con.print(f"missing image files: {_listed(summary.missing_files)}", soft_wrap=True)
    if summary.unreadable_files:
        con.print(f"unreadable image files (not regular files, or outside the image folder; skipped): "
                  f"{_listed(summary.unreadable_files)}", soft_wrap=True)
    if summary.corrupt_files is not None:
        con.print(f"corrupt image files: {_listed(summary.corrupt_files)}", soft_wrap=True)
