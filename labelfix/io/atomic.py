"""Atomic file writing: every file labelfix writes goes through here.

A file is written under a temporary name in the destination folder, flushed and
fsync'ed, then renamed over the final name, so an interrupted command leaves either
the old file or the new one, never a half-written one.

Permissions are those of a file made with ``open()``: ``0o666 & ~umask`` for a new
file, the old file's mode when one is replaced (``tempfile.mkstemp`` alone would give
0600). Inside ``with output_set():`` the renames wait until the block succeeds, so a
command writing several files (a COCO file and its change log) leaves all of them or
none (a failure removes the temporaries, and no final name is touched).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

#: the open ``output_set`` blocks, innermost last: each maps the absolute final path of a
#: pending write to its temporary (None: the file is to be removed)
_SETS: contextvars.ContextVar[tuple[dict, ...]] = contextvars.ContextVar("labelfix_atomic_sets", default=())


#: an atomic write's temporary: ``.<final name>.<8 random characters>.tmp`` (``mkstemp``)
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def sweep_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporaries that interrupted atomic writes left under ``folder`` (a
    SIGKILL leaves them; nothing else can), symlinks not followed; returns how many.

    Only for a folder no other process writes: labelfix sweeps a run directory when it
    takes the run's lock (:func:`labelfix.io.lock.run_lock`).
    """
    removed = 0
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            path = Path(root) / name
            if TEMPORARY_NAME.match(name) and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not
    thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Use it for writers that want a file name (``torch.save``, ``onnx.save``, matplotlib).
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, _new_file_mode(path))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        sets = _SETS.get()
        if sets:
            _stage(sets[-1], tmp_path, path)
            return
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, str(tmp_path)):
            # name the file the user asked for, not the temporary
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def _key(path: str | os.PathLike) -> Path:
    """One spelling per file (``run/x``, ``./run/x`` and ``/abs/run/x`` are one file)."""
    return Path(os.path.abspath(path))


def _stage(pending: dict, tmp: Path | None, final: str | os.PathLike) -> None:
    """Queue ``tmp`` to become ``final`` (None: ``final`` is to be removed); a second write
    of the same file inside the set replaces the first (its temporary is removed; an open
    memmap of it stays readable)."""
    key = _key(final)
    old = pending.get(key)
    if old is not None and old != tmp:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    pending[key] = tmp


def _discard(pending: dict) -> None:
    for tmp in pending.values():
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def output_set() -> Iterator[None]:
    """Write several files as one: every atomic write (and :func:`remove`) inside the
    block goes to its temporary file, and all are renamed into place only when the block
    exits without an exception; on an exception all temporaries are removed and no final
    file changes. A set opened inside another joins it (its files are written with the
    outer set's).

    A writer that reads its own outputs back inside the block reads them through
    :func:`staged` (they do not exist under the final name until the block ends). The
    renames at the end run writes first, removals last; an error among them (rare: each
    temporary sits in its final folder) can leave the set partly renamed.
    """
    pending: dict = {}
    token = _SETS.set(_SETS.get() + (pending,))
    try:
        yield
    except BaseException:
        _discard(pending)
        raise
    finally:
        _SETS.reset(token)
    outer = _SETS.get()
    if outer:
        for final, tmp in pending.items():
            _stage(outer[-1], tmp, final)
        return
    try:
        for final, tmp in pending.items():
            if tmp is not None:
                os.replace(tmp, final)
        for final, tmp in pending.items():
            if tmp is None:
                final.unlink(missing_ok=True)
    except BaseException:
        _discard(pending)
        raise
    for folder in {final.parent for final in pending}:
        _fsync_dir(folder)


def staged(path: str | os.PathLike) -> Path:
    """Where the newest content of ``path`` is: inside an :func:`output_set`, the
    temporary file that will become ``path`` when the set is written (``path`` itself
    when the set has not written it). FileNotFoundError when the set removes it."""
    key = _key(path)
    for pending in reversed(_SETS.get()):
        if key in pending:
            if pending[key] is None:
                raise FileNotFoundError(errno.ENOENT, "removed by this output set", str(path))
            return pending[key]
    return Path(path)


def remove(path: str | os.PathLike) -> None:
    """Remove ``path`` if it exists; inside an :func:`output_set`, when the set is written
    (an exception in the block keeps the file)."""
    sets = _SETS.get()
    if sets:
        _stage(sets[-1], None, path)
    else:
        Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` that writes to a temporary file and renames it into place on success."""
    if not any(m in mode for m in "wx"):
        raise ValueError("atomic_open is for writing")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` atomically (readable with ``np.load(mmap_mode='r')``)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def write_csv(path: str | os.PathLike, frame, chunk_rows: int = 500_000, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given), in
    blocks of ``chunk_rows`` so that pandas' text conversion of a table with tens of
    millions of rows does not hold it all in memory at once."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        if len(frame) <= chunk_rows:
            frame.to_csv(fh, **kwargs)
            return
        for start in range(0, len(frame), chunk_rows):
            frame.iloc[start : start + chunk_rows].to_csv(fh, header=start == 0, **kwargs)


@contextlib.contextmanager
def atomic_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype, fill=None) -> Iterator[np.memmap]:
    """Create a ``.npy`` memmap under a temporary name, yield it for filling in place,
    flush and rename it into place when the block exits without error.

    For arrays too large to hold in memory (N x K per-cell statistics).
    """
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        if fill is not None:
            arr[...] = fill
        yield arr
        arr.flush()
        del arr
