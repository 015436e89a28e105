"""Outputs never replace inputs or run state: the one check every writing command uses.

:func:`check_outputs` refuses an output path that resolves (symlinks, ``..``, hard
links, bind mounts: ``os.path.realpath`` and ``os.path.samefile``) to one of the
command's inputs, to a file a run directory owns (:data:`RUN_OWNED`), or to anything
inside a run directory: a run directory holds only what labelfix itself writes there,
so a user-chosen output (a cleaned COCO file, an ONNX model, a change log, predictions)
goes elsewhere. Derived names (``<out>.changes.csv``, :func:`change_log_for`) are
checked the same way: pass them in ``outputs`` too. With ``overwrite=False`` (the label
files of ``labelfix noise`` and ``labelfix export coco``, which another run may train on
or a benchmark score against) an existing output is refused unless the user asks for it.
:func:`check_run_output` is the variant for ``labelfix train --out RUN``: none of the
files the run will write may be an input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from labelfix.errors import LabelfixError

#: names a run directory owns (written by train / clean / review; docs/internals.md)
RUN_OWNED = (
    "labels.npy", "images.csv", "classes.json", "source.json", "split.npy", "folds.npy", "verified.npy",
    "config.yaml", "checkpoints", "stats", "cells", "corrections.csv", "decisions.csv", "decisions_archive.csv",
    "features", "folds",
    "metrics.csv", "skipped_images.csv", "review.json", "report", ".labelfix.lock",
)


def real(path: str | os.PathLike) -> Path:
    """Absolute path with every symlink and ``..`` resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are the same file: equal real paths, or (both existing)
    the same device and inode (hard links, bind mounts)."""
    if real(a) == real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def is_run_dir(path: str | os.PathLike) -> bool:
    """A labelfix run directory: it holds ``labels.npy``, or ``config.yaml`` and
    ``checkpoints/`` (a training run that has not saved its labels yet)."""
    p = Path(path)
    try:
        return ((p / "labels.npy").is_file() or ((p / "config.yaml").is_file() and (p / "checkpoints").is_dir())
                or (p / "checkpoints" / "last.pt").is_file() or (p / "checkpoints" / "best.pt").is_file())
    except OSError:
        return False


def enclosing_run(path: str | os.PathLike, include_self: bool = False) -> Path | None:
    """The run directory that holds ``path`` (its real path), or None."""
    p = real(path)
    candidates = ([p] if include_self else []) + list(p.parents)
    for d in candidates:
        if is_run_dir(d):
            return d
    return None


def _inputs(inputs: Iterable) -> list[Path]:
    out = []
    for i in inputs:
        if i is None or (isinstance(i, str) and (not i or i.startswith("fiftyone://"))):
            continue
        out.append(Path(i))
    return out


def change_log_for(out: str | os.PathLike) -> Path:
    """The change log written next to a label file: ``<out without .json>.changes.csv``
    (``labelfix noise`` and ``labelfix export coco``)."""
    out = Path(out)
    return out.with_name((out.name[:-5] if out.name.lower().endswith(".json") else out.name) + ".changes.csv")


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Iterable = (),
                  runs: Iterable = (), *, overwrite: bool = True) -> None:
    """Refuse outputs that would replace an input, run state, or each other.

    Args:
        outputs: ``{what: path}``, ``what`` names the option in messages (``"--out"``,
            ``"--changes"``, ``"change log"``); None paths are skipped.
        inputs: the files and folders the command reads (label file, run directory,
            class descriptions, model, images...); None entries are skipped.
        runs: run directories the command reads (an output inside one is refused even
            when the folder does not look like a run yet).
        overwrite: False refuses an output that already exists (``--overwrite`` of the
            commands that write label files).

    Raises LabelfixError, one line: ``"<out>: refusing to overwrite the input <in>; choose
    another --out"``, ``"<out>: inside the run directory <run> ..."``, ``"<a>: --out and
    --changes are the same file"`` or ``"<out>: already exists (--out); pass --overwrite
    ..."``.
    """
    ins = _inputs(inputs)
    run_dirs = [real(r) for r in _inputs(runs)]
    items = [(what, Path(p)) for what, p in outputs.items() if p is not None]
    for what, out in items:
        if out.is_dir():
            raise LabelfixError(f"{out}: {what} is a folder; give a file name")
        for i in ins:
            if same_file(out, i):
                raise LabelfixError(f"{out}: refusing to overwrite the input {i} ({what}); choose another {what}")
        run = enclosing_run(out)
        if run is None:
            run = next((r for r in run_dirs if _inside(out, r)), None)
        if run is not None:
            rel = real(out).relative_to(run)
            owned = rel.parts[0] in RUN_OWNED
            raise LabelfixError(
                f"{out}: inside the run directory {run}"
                + (f" (it would replace the run's {rel.parts[0]})" if owned else "")
                + f"; write {what} outside run directories")
    for j, (what_a, a) in enumerate(items):
        for what_b, b in items[j + 1:]:
            if same_file(a, b):
                raise LabelfixError(f"{a}: {what_a} and {what_b} are the same file; choose different names")
    if not overwrite:   # after the checks above: an input or run state is refused even with --overwrite
        for what, out in items:
            if os.path.lexists(out):
                raise LabelfixError(f"{out}: already exists ({what}); pass --overwrite to replace it, or choose "
                                    f"another name (another run may train on it, or a benchmark score against it)")


def check_run_output(out: str | os.PathLike, inputs: Iterable = (), *, resume: bool = False,
                     what: str = "--out") -> None:
    """``labelfix train --out RUN``: refuse a run directory that is one of the inputs (a
    run given as DATA) or lies inside another run directory, and any file the run will
    write (:data:`RUN_OWNED`) that resolves to an input (a label file called
    ``images.csv`` in RUN, ``--config RUN/config.yaml`` for a new run, weights under
    ``RUN/checkpoints``). With ``resume`` the run's own ``config.yaml`` may be an input
    (it is rewritten with the same options)."""
    out = Path(out)
    ins = _inputs(inputs)
    for i in ins:
        if same_file(out, i):
            raise LabelfixError(f"{out}: {what} is the input {i}; choose another {what}")
    parent = enclosing_run(out.parent, include_self=True) if str(out.parent) else None
    if parent is not None and real(parent) != real(out):
        raise LabelfixError(f"{out}: inside the run directory {parent}; choose a {what} outside it")
    for name in RUN_OWNED:
        target = out / name
        for i in ins:
            if resume and name == "config.yaml":
                continue
            if same_file(target, i) or (name in ("checkpoints", "stats", "cells", "features", "folds", "report")
                                        and _inside(i, target)):
                raise LabelfixError(f"{i}: the run in {out} would overwrite this input (its {name}); "
                                    f"choose another {what} or move the file")


def default_output_next_to(run: str | os.PathLike, name: str) -> str:
    """A default output path for a file derived from ``run`` (a cleaned COCO file): next
    to the run directory, never inside it (``<parent>/<run name>-<name>``)."""
    p = Path(os.path.abspath(os.fspath(run)))
    return str(p.parent / f"{p.name}-{name}")


def check_output_folder(folder: str | os.PathLike, inputs: Iterable = (), what: str = "--out") -> None:
    """An output folder (``labelfix bench --out``) must not be an input, or be (or lie
    inside) a run directory."""
    folder = Path(folder)
    for i in _inputs(inputs):
        if same_file(folder, i):
            raise LabelfixError(f"{folder}: {what} is the input {i}; choose another folder")
    run = enclosing_run(folder, include_self=True)
    if run is not None:
        raise LabelfixError(f"{folder}: inside the run directory {run}; choose a {what} outside run directories")


def _inside(path: Path, folder: Path) -> bool:
    try:
        real(path).relative_to(real(folder))
        return True
    except ValueError:
        return False
