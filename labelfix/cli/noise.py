"""``labelfix noise DATA --kind K --rate R --out NOISY.json``."""

from __future__ import annotations

import click

from labelfix.cli.options import FiniteFloat, check_extension, data_options, read_from_options
from labelfix.data.noise import KINDS


@click.command()
@click.argument("data", type=click.Path())
@data_options
@click.option("--kind", type=click.Choice(KINDS), required=True, help="Noise protocol (docs/user_guide.md, \"Noise injection\").")
@click.option("--rate", type=FiniteFloat(0, 1), default=None,
              help="Noise rate (required except for single-positive).")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Noisy COCO JSON to write (a .json name); <out stem>.changes.csv gets the true label of every "
                   "changed cell. Neither may be an input, nor inside a run directory.")
@click.option("--overwrite", is_flag=True, help="Replace --out and its change log when they exist (refused otherwise).")
def noise(data, fmt, images, unlabeled, class_descriptions, ignore_columns, file_column, kind, rate, seed, out,
          overwrite):
    """Inject benchmark label noise into a clean dataset (seeded)."""
    from labelfix.data.noise import write_noisy_coco
    from labelfix.errors import LabelfixError
    from labelfix.io.outputs import change_log_for, check_outputs

    if kind == "single-positive" and rate is not None:
        raise LabelfixError("--rate does not apply to single-positive noise")
    if kind != "single-positive" and rate is None:
        raise LabelfixError(f"--rate is required for {kind} noise")
    check_extension(out, ".json", "--out", "noise writes a COCO JSON file")
    inputs = [data, class_descriptions]
    check_outputs({"--out": out, "change log": change_log_for(out)}, inputs, overwrite=overwrite)
    ls = read_from_options(data, fmt, images, unlabeled, class_descriptions, ignore_columns, file_column)
    if images is not None:   # recorded in the noisy file as its image folder, so it must be the right one
        from labelfix.validation import require_image_folder

        require_image_folder(ls)
    out, changes_path, changes = write_noisy_coco(ls, kind, rate, seed, out, overwrite=overwrite)
    known = int((ls.labels != -1).sum())
    click.echo(f"{kind} noise: {len(changes)} of {ls.num_images * ls.num_classes} cells changed "
               f"({known} known before); wrote {out} and {changes_path}")
