"""`labelfix review RUN --launch` as a user runs it: the App answers over HTTP on the
chosen port, listens on 127.0.0.1 by default, and Ctrl-C stops it cleanly (one line, no
traceback, no mongod or App server left behind)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from test_export_coco import make_run

pytestmark = pytest.mark.fiftyone

LABELFIX = Path(sys.executable).with_name("labelfix")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strays(db_dir: str, port: int) -> list[str]:
    """Processes still using the test's database folder or serving its port."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if db_dir in cmd or re.search(rf"--port {port}\b", cmd):
            out.append(f"{proc.info['pid']}: {cmd[:160]}")
    return out


def _listening(pids: list[int], port: int) -> set[str]:
    """Addresses the given processes listen on at ``port``."""
    found = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return found


def test_cli_default_address_is_loopback():
    from labelfix.cli.review import review

    opts = {p.name: p for p in review.params}
    assert opts["address"].default == "127.0.0.1" and opts["port"].default == 5151
    assert {"launch", "port", "address", "name"} <= set(opts)


def test_launch_serves_the_app_and_stops_on_ctrl_c(demo_data, tmp_path):
    run_dir = make_run(demo_data, tmp_path / "run")
    db_dir = str(tmp_path / "fodb")  # its own database: its mongod must go when it stops
    env = dict(os.environ, FIFTYONE_DATABASE_DIR=db_dir, FIFTYONE_DO_NOT_TRACK="true",
               FIFTYONE_DATABASE_VALIDATION="false", PYTHONUNBUFFERED="1")
    env.pop("FIFTYONE_PLUGINS_DIR", None)
    port = _free_port()
    # no --address: the default must be 127.0.0.1
    proc = subprocess.Popen(
        [str(LABELFIX), "review", str(run_dir), "--launch", "--port", str(port), "--name", f"launch-{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
        # a test run started in the background (`cmd &`) inherits SIGINT ignored, and a
        # Python started with SIGINT ignored never raises KeyboardInterrupt: restore the
        # terminal's default, as in an interactive shell
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    status = r.status
                    page = r.read(2000).decode("utf-8", "replace")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        assert status == 200, f"the App did not answer on port {port} (exit code {proc.poll()})"
        assert "<html" in page.lower()
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert _listening([proc.pid, *children], port) == {"127.0.0.1"}
        # wait for the "App: ..." line (launch_app returned), then Ctrl-C as a terminal
        # sends it: SIGINT to the whole foreground process group
        time.sleep(1)
        while time.monotonic() < deadline and not any(ln.startswith("App: ") for ln in lines):
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        # closing the session and the database takes seconds; the limit is generous
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 120 s after Ctrl-C; output:\n" + "\n".join(lines))
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "\n".join(lines)
    assert proc.returncode in (0, 130), output
    assert "Traceback" not in output, output
    start = next(i for i, ln in enumerate(lines) if ln.startswith("App: "))
    assert lines[start] == f"App: http://127.0.0.1:{port}/  (Ctrl-C to stop)"
    after = [ln for ln in lines[start + 1:] if not ln.startswith("from another machine: ssh")]
    assert after == ["App stopped"], output
    # nothing left behind: no mongod on the test's database, no App server on the port
    deadline = time.monotonic() + 15
    while _strays(db_dir, port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _strays(db_dir, port) == []
    shutil.rmtree(db_dir, ignore_errors=True)
