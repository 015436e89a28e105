"""Kill safety: SIGKILL labelfix commands at random moments (labelfix.bench.killtest).

The long campaign (>= 20 kills per command) is benchmarks/kill_harness.py; here a few
kills per command keep the file short.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from labelfix.bench.killtest import LABELFIX, kill_campaign, kill_once, scan_outputs, validate_file
from labelfix.io import atomic

PY = sys.executable


# ------------------------------------------------------------------ the harness itself
def test_validators_detect_truncated_files(tmp_path):
    good = tmp_path / "a.npy"
    atomic.write_npy(good, np.zeros((4, 3), np.float32))
    assert validate_file(good, {"a.npy": (4, 3)}, "a.npy") is None
    assert "shape (4, 3), expected (5, 3)" in validate_file(good, {"*.npy": (5, 3)}, "a.npy")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-8])
    assert validate_file(cut) is not None
    j = tmp_path / "x.json"
    j.write_text('{"images": [1, 2')
    assert validate_file(j).startswith("JSONDecodeError")
    c = tmp_path / "x.csv"
    c.write_text("a,b\n1,2\n3\n")
    assert "row 3 has 1 fields, header has 2" in validate_file(c)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}))
    assert validate_file(coco) is None


def test_scan_counts_temps_and_locks(tmp_path):
    (tmp_path / ".x.json.abc123.tmp").write_text("{")
    (tmp_path / ".labelfix.lock").write_text("{}")
    (tmp_path / "ok.json").write_text("{}")
    res = scan_outputs(tmp_path)
    assert res == {"checked": 1, "corrupted": {}, "leftover_temps": [".x.json.abc123.tmp"],
                   "stale_locks": [".labelfix.lock"]}


def test_harness_catches_a_non_atomic_writer(tmp_path):
    """A writer that writes the final name directly is caught half-way by the kill."""
    src = tmp_path / "input.txt"
    src.write_text("hello")
    code = ("import sys, time; f = open(sys.argv[1] + '/out.json', 'w'); f.write('{\"a\": ['); f.flush(); "
            "print('x', file=sys.stderr, flush=True); time.sleep(60)")
    res = kill_once([PY, "-c", code, "{out}"], [src], tmp_path / "o", delay_s=3.0)
    assert res.killed and res.exit_code == -9
    assert list(res.corrupted) == ["out.json"] and not res.ok
    assert res.inputs_changed == []


def test_harness_catches_changed_inputs(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("hello")
    code = "import sys; open(sys.argv[1], 'a').write('!')"
    res = kill_once([PY, "-c", code, str(src)], [src], tmp_path / "o", delay_s=30.0)
    assert not res.killed and res.exit_code == 0
    assert res.inputs_changed == [str(src)] and not res.ok


# ------------------------------------------------------------------ labelfix commands
@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("kill-demo"), n_train=60, n_test=10, size=32, seed=0)["train"]


def test_noise_kill_safe(small_coco, tmp_path):
    cmd = [*LABELFIX, "noise", str(small_coco), "--kind", "flip", "--rate", "0.2", "--out", "{out}/noisy.json",
           "--overwrite"]   # the re-run after a kill that came after the files were written
    s = kill_campaign("noise", cmd, [small_coco], tmp_path, n_runs=3, seed=1, window=(0.3, 1.0), rerun_every=3)
    assert s["runs"] == 3 and s["reruns"] == 1
    assert s["corrupted_files"] == 0 and s["inputs_changed"] == 0 and s["reruns_failed"] == 0, s["problems"]
    assert s["failed_without_kill"] == 0, s["problems"]
    # the uninterrupted reference run wrote both outputs, and they are valid
    ref = scan_outputs(tmp_path / "reference")
    assert ref["checked"] == 2 and not ref["corrupted"] and not ref["leftover_temps"]


def test_info_kill_safe(small_coco, tmp_path):
    cmd = [*LABELFIX, "info", str(small_coco), "--json"]
    s = kill_campaign("info", cmd, [small_coco, Path(small_coco).parent], tmp_path, n_runs=2, seed=2)
    assert s["inputs_changed"] == 0 and s["corrupted_files"] == 0, s["problems"]
    assert all(not any((tmp_path / f"run-{i:03d}").rglob("*")) for i in range(2))  # info writes nothing


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not _have("labelfix.cli.clean"), reason="labelfix clean not in this checkout")
def test_clean_kill_safe(tmp_path):
    from labelfix.bench.synthetic import make_synthetic_run

    n, k = 300, 8
    base = make_synthetic_run(tmp_path / "base", n, k, seed=0)

    def prepare(out: Path) -> None:
        shutil.copytree(base, out)

    inputs = ["{out}/labels.npy", "{out}/images.csv", "{out}/classes.json", "{out}/stats/logits.npy",
              "{out}/stats/loss_mean.npy"]
    cmd = [*LABELFIX, "clean", "{out}", "--no-report"]
    s = kill_campaign("clean", cmd, inputs, tmp_path / "kills", n_runs=2, seed=3, window=(0.4, 1.0),
                      expected_shapes={"cells/*.npy": (n, k), "stats/*.npy": (n, k)}, prepare=prepare, rerun_every=2)
    assert s["corrupted_files"] == 0 and s["inputs_changed"] == 0 and s["reruns_failed"] == 0, s["problems"]
