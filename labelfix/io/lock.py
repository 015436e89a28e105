"""Run-directory lock: one writing command per run directory at a time.

``labelfix train / clean / review / export`` hold ``RUN/.labelfix.lock`` while they write.
The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and
NFSv3+), and holds one JSON object: ``{"pid", "host", "command", "started"}``.

A second command on the same run directory gets a LabelfixError naming the holder. A
lock left behind by a process that no longer exists *on this host* (a SIGKILL, a
crash) is taken over with a note on stderr; a lock from another host is never taken
over automatically, because this host cannot tell whether that process is alive.
Taking the lock removes the temporaries of atomic writes an interrupted command left in
the run directory (:func:`labelfix.io.atomic.sweep_temporaries`), with a note.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from labelfix.errors import LabelfixError
from labelfix.io import atomic

LOCK_NAME = ".labelfix.lock"


def _to_stderr(msg: str) -> None:
    """Where the lock's notes go when the caller gives no ``note``."""
    print(msg, file=sys.stderr)


def lock_path(run_dir: str | os.PathLike) -> Path:
    """The lock file of ``run_dir``."""
    return Path(run_dir) / LOCK_NAME


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (signal 0 probe)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def read_lock(path: str | os.PathLike) -> dict | None:
    """The holder record of a lock file; ``None`` when the file is absent. An unreadable
    or partial record (a writer killed between create and write) gives ``{}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _describe(rec: dict) -> str:
    cmd = rec.get("command", "?")
    pid = rec.get("pid", "?")
    host = rec.get("host")
    started = rec.get("started", "?")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"locked by `labelfix {cmd}` (pid {pid}{where}, started {started})"


def _is_stale(rec: dict) -> bool:
    """A lock is stale when it names a pid on this host that is not running."""
    pid = rec.get("pid")
    if rec.get("host") != socket.gethostname() or isinstance(pid, bool) or not isinstance(pid, int):
        return False
    return not pid_alive(pid)


def _create(path: Path, record: dict) -> bool:
    """Create the lock file exclusively and write ``record``; False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(fd)
    except BaseException as err:
        # a full disk or a failing device: do not leave an empty lock that would block
        # the run until someone removes it by hand
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    os.close(fd)
    return True


def acquire(run_dir: str | os.PathLike, command: str, note: Callable[[str], None] | None = None) -> Path:
    """Take the lock of ``run_dir`` for ``command`` (e.g. ``"clean"``) or raise LabelfixError.

    Returns the lock file path. ``note`` receives the message printed when a stale lock
    is taken over (default: stderr).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LabelfixError(f"{run_dir}: run directory not found")
    path = lock_path(run_dir)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    note = note or _to_stderr
    for _ in range(3):  # create, or take over a stale lock once (with a retry for a race)
        if _create(path, record):
            return path
        rec = read_lock(path)
        if rec is None:  # released between our create and read
            continue
        if rec and _is_stale(rec):
            note(f"note: {run_dir}: taking over a stale lock of `labelfix {rec.get('command', '?')}` "
                 f"(pid {rec.get('pid')} is gone, started {rec.get('started', '?')})")
            # Rename first so two processes taking over the same stale lock cannot both win:
            # only one rename of the stale file succeeds.
            grave = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                continue
            if read_lock(grave) != rec:  # we moved a fresh lock someone else just made: put it back
                with contextlib.suppress(OSError):
                    os.rename(grave, path)
                continue
            with contextlib.suppress(FileNotFoundError):
                grave.unlink()
            continue
        holder = _describe(rec) if rec else "locked (unreadable lock file)"
        raise LabelfixError(f"{run_dir}: {holder}; wait for it or remove {path} if that process is gone")
    raise LabelfixError(f"{run_dir}: could not take the lock {path} (another command is starting); try again")


def release(path: str | os.PathLike) -> None:
    """Remove a lock file taken by this process (leaves another process's lock alone)."""
    path = Path(path)
    rec = read_lock(path)
    if rec is not None and rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str, note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the duration of the block.

    Example::

        with run_lock(run_dir, "clean"):
            ...  # write cells/, corrections.csv, report/

    Raises LabelfixError ``"<run>: locked by `labelfix <cmd>` (pid N, started T); wait for
    it or remove <lockfile> if that process is gone"`` when another live command holds it.
    """
    path = acquire(run_dir, command, note=note)
    try:
        # no other command writes the run now: what an interrupted one left can go
        swept = atomic.sweep_temporaries(run_dir)
        if swept:
            (note or _to_stderr)(
                f"note: {run_dir}: removed {swept} temporary file(s) an interrupted command left")
        yield path
    finally:
        release(path)
