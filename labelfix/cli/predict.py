"""``labelfix predict MODEL.onnx IMAGES...``: onnxruntime inference, no torch import."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from labelfix.cli.options import FiniteFloat


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write all columns (file, labels, one probability per class) to a .csv or "
                   ".parquet file [default: print file,labels as CSV].")
@click.option("--threshold", type=FiniteFloat(0, 1), default=None,
              help="Decision threshold on probabilities [default: the model's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --out when it exists (refused otherwise: a CSV may be "
                                               "another run's label file).")
def predict(model: Path, images: tuple[Path, ...], out: Path | None, threshold: float | None,
            batch_size: int, overwrite: bool) -> None:
    """Predict the labels of IMAGES (files or folders, searched recursively) with a
    MODEL exported by `labelfix export onnx`. In folders, files ending in an image
    extension (.jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp) are read; unreadable
    images are skipped and counted."""
    from labelfix.errors import LabelfixError
    from labelfix.export.predict import LISTED_TWICE, OTHER_EXTENSION, collect_images, escaped_note
    from labelfix.export.predict import predict as run_predict
    from labelfix.io.atomic import atomic_path, write_csv
    from labelfix.io.outputs import check_outputs

    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise LabelfixError(f"{out}: --out must end in .csv or .parquet")
    check_outputs({"--out": out}, [model, *images], overwrite=overwrite)
    left_out: list = []
    files = collect_images(images, skipped=left_out)
    if not files:
        raise LabelfixError(f"{', '.join(map(str, images))}: no images found"
                            + (f" ({len(left_out)} left out, first: {left_out[0][0]}: {left_out[0][1]})"
                               if left_out else ""))
    df = run_predict(model, files, batch_size=batch_size, threshold=threshold, warn=False)   # said below
    skipped = left_out + list(df.attrs.get("skipped", []))
    twice = sum(why == LISTED_TWICE for _file, why in skipped)
    other = sum(why == OTHER_EXTENSION for _file, why in skipped)
    unreadable = [(f, why) for f, why in skipped if why not in (LISTED_TWICE, OTHER_EXTENSION)]
    if not len(df):   # nothing to write: an error, not an empty table
        raise LabelfixError(f"{unreadable[0][0]}: {unreadable[0][1]}; none of the {len(unreadable)} image(s) could "
                            f"be read")
    if out is None:
        df[["file", "labels"]].to_csv(sys.stdout, index=False)
    elif out.suffix.lower() == ".csv":
        write_csv(out, df)
    else:
        try:
            with atomic_path(out) as tmp:
                df.to_parquet(tmp, index=False)
        except ImportError as err:
            raise LabelfixError(f"{out}: writing parquet needs pyarrow ({err})") from err
    if df.attrs.get("escaped"):
        click.echo(f"note: {escaped_note(df.attrs['escaped'])}", err=True)
    with_separator = [n for n in df.columns[2:] if ";" in str(n)]
    if with_separator:   # the labels column joins names with ';'
        click.echo(f"note: class name(s) {', '.join(map(repr, with_separator[:3]))} contain ';', which also "
                   f"separates the names in the labels column; read the probability columns (--out) to tell them "
                   f"apart", err=True)
    click.echo(f"predicted {len(df)} image(s)"
               + (f", skipped {len(unreadable)} unreadable (first: {unreadable[0][0]}: {unreadable[0][1]})"
                  if unreadable else "")
               + (f", {other} other file(s) in the folders not read (not an image extension)" if other else "")
               + (f", {twice} listed twice (predicted once)" if twice else "")
               + (f"; wrote {out}" if out is not None else ""), err=True)
