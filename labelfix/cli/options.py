"""Click options shared by several commands."""

from __future__ import annotations

import functools

import click

from labelfix.io import FORMATS


def data_options(fn):
    """``--format``, ``--images``, ``--unlabeled``, ``--classes`` for commands that read labels."""

    @click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                  help="Label format; detected from the file when omitted.")
    @click.option("--images", type=click.Path(file_okay=False), default=None,
                  help="Folder the image file names are relative to (default: the label file's folder).")
    @click.option("--unlabeled", type=click.Choice(["negative", "unknown"]), default=None,
                  help="COCO: state of classes an image does not mention (default: negative, "
                       "unknown for LVIS-style files).")
    @click.option("--classes", "class_descriptions", type=click.Path(dir_okay=False), default=None,
                  help="Open Images class-description CSV (LabelName,DisplayName).")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def read_from_options(data, fmt, images, unlabeled, class_descriptions):
    from labelfix.io import read_labels

    return read_labels(data, format=fmt, images=images, unlabeled=unlabeled, class_descriptions=class_descriptions)
