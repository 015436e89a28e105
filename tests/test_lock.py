"""Run-directory lock (labelfix.io.lock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from labelfix.errors import LabelfixError
from labelfix.io.lock import LOCK_NAME, acquire, pid_alive, read_lock, release, run_lock


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


def test_lock_record_and_release(tmp_path):
    with run_lock(tmp_path, "clean") as path:
        assert path == tmp_path / LOCK_NAME
        rec = json.loads(path.read_text())
        assert rec["pid"] == os.getpid()
        assert rec["host"] == socket.gethostname()
        assert rec["command"] == "clean"
        assert "T" in rec["started"]  # ISO time
    assert not (tmp_path / LOCK_NAME).exists()


def test_released_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path, "train"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_holder_refused_with_message(tmp_path):
    with run_lock(tmp_path, "train"):
        with pytest.raises(LabelfixError) as err:
            with run_lock(tmp_path, "clean"):
                pass
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path}: locked by `labelfix train` (pid {os.getpid()}, started ")
        assert f"wait for it or remove {tmp_path / LOCK_NAME} if that process is gone" in msg
        assert "\n" not in msg
        # the refused attempt must not remove the holder's lock
        assert read_lock(tmp_path / LOCK_NAME)["command"] == "train"
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_other_live_process(tmp_path):
    code = (
        "import sys, time; from labelfix.io.lock import run_lock\n"
        "with run_lock(sys.argv[1], 'export'):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(LabelfixError, match=rf"locked by `labelfix export` \(pid {p.pid}, started"):
            acquire(tmp_path, "review")
    finally:
        p.kill()
        p.wait()
    # killed holder: its lock is now stale and gets taken over
    notes = []
    with run_lock(tmp_path, "review", note=notes.append):
        assert read_lock(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {p.pid} is gone" in notes[0] and "`labelfix export`" in notes[0]


def test_stale_lock_taken_over(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "command": "train", "started": "2024-01-01T00:00:00+00:00"}))
    notes = []
    with run_lock(tmp_path, "clean", note=notes.append) as path:
        assert read_lock(path)["command"] == "clean"
    assert notes == [f"note: {tmp_path}: taking over a stale lock of `labelfix train` "
                     f"(pid {pid} is gone, started 2024-01-01T00:00:00+00:00)"]
    assert sorted(os.listdir(tmp_path)) == []


def test_taking_the_lock_sweeps_what_a_killed_write_left(tmp_path):
    """A SIGKILL mid-write leaves an atomic write's temporary: the next lock holder removes
    those (anywhere in the run, names of that pattern only, symlinks not followed) and
    says how many; a live write's temporary is never swept, since only the holder writes."""
    from labelfix.io import atomic

    (tmp_path / "cells").mkdir()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-outside"
    elsewhere.mkdir()
    left = [tmp_path / ".labels.npy.k2x_9abc.tmp", tmp_path / "cells" / ".score.npy.0123abcd.tmp"]
    kept = [tmp_path / "cells" / "score.npy", tmp_path / ".notes.tmp", tmp_path / "cells" / ".a.b.TOOLONG12.tmp",
            elsewhere / ".x.npy.abcdefgh.tmp"]
    for f in left + kept:
        f.write_text("x")
    (tmp_path / "linked").symlink_to(elsewhere, target_is_directory=True)
    notes = []
    with run_lock(tmp_path, "clean", note=notes.append):
        with atomic.atomic_path(tmp_path / "cells" / "new.npy") as tmp:   # the holder's own write
            tmp.write_text("y")
    assert notes == [f"note: {tmp_path}: removed 2 temporary file(s) an interrupted command left"]
    assert not any(f.exists() for f in left) and all(f.exists() for f in kept)
    assert (tmp_path / "cells" / "new.npy").read_text() == "y"
    with run_lock(tmp_path, "clean", note=notes.append):
        pass
    assert len(notes) == 1   # nothing left: no note


def test_lock_from_other_host_not_taken_over(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": "some-other-host", "command": "train", "started": "x"}))
    with pytest.raises(LabelfixError, match=f"pid {pid} on some-other-host"):
        acquire(tmp_path, "clean")
    assert read_lock(tmp_path / LOCK_NAME)["host"] == "some-other-host"


def test_unreadable_lock_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # writer killed between create and write
    with pytest.raises(LabelfixError, match="locked \\(unreadable lock file\\); wait for it or remove"):
        acquire(tmp_path, "clean")


def test_release_leaves_foreign_lock(tmp_path):
    rec = {"pid": os.getpid() + 1, "host": socket.gethostname(), "command": "train", "started": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    release(tmp_path / LOCK_NAME)
    assert read_lock(tmp_path / LOCK_NAME) == rec


def test_missing_run_dir(tmp_path):
    with pytest.raises(LabelfixError, match="run directory not found"):
        acquire(tmp_path / "nope", "clean")


def test_concurrent_acquire_one_winner(tmp_path):
    """Several processes race for the lock at once: exactly one gets it."""
    code = (
        "import sys, time; from labelfix.io.lock import acquire\n"
        "from labelfix.errors import LabelfixError\n"
        "t0 = float(sys.argv[2])\n"
        "while time.time() < t0: pass\n"
        "try:\n    acquire(sys.argv[1], 'clean'); print('won', flush=True); time.sleep(3)\n"
        "except LabelfixError: print('lost')\n"
    )
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["lost", "lost", "lost", "won"]
