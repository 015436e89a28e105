"""The ``labelfix`` command line: a thin shell over the library.

Commands are loaded lazily (``predict`` must run without importing torch, and
``--help`` should be fast: no command module imports torch at import time, which
``tests/test_reliability.py`` checks); each lives in its own module under
``labelfix/cli/``.

Errors reach the user as one line on stderr: ``LabelfixError`` (bad input, refused
operation) -> ``error: ...`` and exit code 2; ``OSError`` (disk full, read-only folder,
permission denied ...) -> ``error: <file>: <reason> (<what to do>)`` and exit code 1.
``LabelfixWarning`` (documented skips with counts) -> ``note: ...`` on stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings

import click

from labelfix.errors import LabelfixError, LabelfixWarning, describe_os_error

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
            with _notes():
                return super().invoke(ctx)
        except LabelfixError as err:
            click.echo(f"error: {_one_line(str(err))}", err=True)
            sys.exit(2)
        except click.UsageError as err:
            # a subcommand's bad option value: one line (click's own format takes four)
            where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
            click.echo(f"error: {where}{_one_line(err.format_message())} (see --help)", err=True)
            sys.exit(2)
        except OSError as err:
            click.echo(f"error: {_one_line(describe_os_error(err))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")) if "\n" in text else text


@contextlib.contextmanager
def _notes():
    """Show ``LabelfixWarning`` as ``note: <message>`` lines on stderr (each once)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LabelfixWarning):
            click.echo(f"note: {_one_line(str(message))}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", LabelfixWarning)
        warnings.showwarning = show
        yield


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labelfix")
def main() -> None:
    """labelfix: find and fix wrong and missing labels in partially labeled
    multi-label image datasets."""
