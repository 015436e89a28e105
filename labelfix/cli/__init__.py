"""The ``labelfix`` command line: a thin shell over the library.

Commands are loaded lazily (``predict`` must run without importing torch, and
``--help`` should be fast); each lives in its own module under ``labelfix/cli/``.
"""

from __future__ import annotations

import importlib
import sys

import click

from labelfix.errors import LabelfixError

# command name -> "module:attribute"
COMMANDS = {
    "info": "labelfix.cli.info:info",
    "noise": "labelfix.cli.noise:noise",
    "demo": "labelfix.cli.demo:demo",
    "train": "labelfix.cli.train:train",
    "clean": "labelfix.cli.clean:clean",
    "review": "labelfix.cli.review:review",
    "export": "labelfix.cli.export:export",
    "predict": "labelfix.cli.predict:predict",
    "bench": "labelfix.cli.bench:bench",
}


def _load(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and which turns
    ``LabelfixError`` into one line on stderr and exit code 2."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            return _load(self.lazy[name])
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LabelfixError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labelfix")
def main() -> None:
    """labelfix: find and fix wrong and missing labels in partially labeled
    multi-label image datasets."""
