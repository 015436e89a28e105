"""Commands that write a run directory refuse to run while another one holds its lock."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from labelfix.cli import main
from labelfix.io.lock import acquire, release


@pytest.mark.parametrize("args", [["clean", "{run}"], ["review", "{run}"],
                                  ["train", "{data}", "--out", "{run}", "--epochs", "1"]])
def test_locked_run_is_refused(tmp_path, demo_data, args):
    run = tmp_path / "run"
    run.mkdir()
    (run / "labels.npy").write_bytes(b"")  # looks like a run; the lock is checked first
    lock = acquire(run, "train")
    try:
        res = CliRunner().invoke(main, [a.format(run=run, data=demo_data["train"]) for a in args])
    finally:
        release(lock)
    assert res.exit_code == 2, res.output
    assert "locked by `labelfix train`" in res.output
    assert "Traceback" not in res.output
