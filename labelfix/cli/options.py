"""Click options shared by several commands."""

from __future__ import annotations

import functools
import math
import os

import click

from labelfix.io import FORMATS


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which passes every comparison, so a
    plain FloatRange accepts it) and +-inf."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv

    def _describe_range(self) -> str:   # click writes "x<=None" for an unbounded range
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()


def check_extension(path, suffixes, option: str, why: str) -> None:
    """An output's name must end with one of ``suffixes`` (the format it is written in):
    writing JSON into ``x.csv`` is refused, never done silently."""
    from labelfix.errors import LabelfixError

    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    name = os.fspath(path)
    if not name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise LabelfixError(f"{name}: {option} must end in {' or '.join(suffixes)} ({why})")


def refuse_unused(ctx: click.Context, names, why: str) -> None:
    """Refuse, with one line, the options of ``names`` (parameter names) that the user gave
    (command line or environment, not left at their default) although they have no
    effect here (``why`` says when they would): never accepted and ignored."""
    from click.core import ParameterSource

    from labelfix.errors import LabelfixError

    flags = {p.name: p.opts[0] for p in ctx.command.params}
    unused = [flags[n] for n in names
              if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]
    if unused:
        raise LabelfixError(f"{ctx.info_name}: {', '.join(unused)}: {why}")


#: help of the CSV reading options, shared by data_options and ``labelfix train``
IGNORE_COLUMN_HELP = ("CSV: a column that is not a class (wide: metadata such as age or view) or not one of the "
                      "long format's (an annotator); repeatable.")
FILE_COLUMN_HELP = "CSV: the column of image file names [default: file_name]."


def data_options(fn):
    """``--format``, ``--images``, ``--unlabeled``, ``--classes``, ``--ignore-column``,
    ``--file-column`` for commands that read labels."""

    @click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                  help="Label format; detected from the file when omitted.")
    @click.option("--images", type=click.Path(file_okay=False, exists=True), default=None,
                  help="Folder the image file names are relative to (default: the label file's folder).")
    @click.option("--unlabeled", type=click.Choice(["negative", "unknown"]), default=None,
                  help="COCO: state of classes an image does not mention (default: negative, "
                       "unknown for LVIS-style files).")
    @click.option("--classes", "class_descriptions", type=click.Path(dir_okay=False), default=None,
                  help="Open Images class-description CSV (LabelName,DisplayName).")
    @click.option("--ignore-column", "ignore_columns", multiple=True, metavar="NAME", help=IGNORE_COLUMN_HELP)
    @click.option("--file-column", default=None, metavar="NAME", help=FILE_COLUMN_HELP)
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def read_from_options(data, fmt, images, unlabeled, class_descriptions, ignore_columns=(), file_column=None):
    from labelfix.io import read_labels

    return read_labels(data, format=fmt, images=images, unlabeled=unlabeled, class_descriptions=class_descriptions,
                       ignore_columns=ignore_columns, file_column=file_column)
