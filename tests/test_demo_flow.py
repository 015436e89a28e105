"""The whole flow (`labelfix demo`) on a shrunken demo dataset: every step runs and
hands the next one what it needs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelfix.io import read_labels
from labelfix.run import load_run


@pytest.mark.slow
@pytest.mark.fiftyone
def test_demo_flow_end_to_end(tmp_path):
    from labelfix.demo import run_demo

    lines = []
    res = run_demo(tmp_path / "demo", epochs=2, n_train=96, n_test=48, log=lines.append)
    # a second run replaces the folder of the first (the marker says it is a demo folder)
    res = run_demo(tmp_path / "demo", epochs=1, n_train=96, n_test=48, log=lines.append)
    assert [ln[:5] for ln in lines[7:13]] == ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"]
    run = load_run(res["run"])
    corr = run.corrections()
    assert len(corr) == res["suggestions"]
    # the cleaned file differs from the noisy one exactly by the accepted suggestions,
    # and accepting only right ones (the simulated reviewer) removes that many errors
    noisy = read_labels(tmp_path / "demo" / "data" / "train_mislabel.json")
    cleaned = read_labels(res["cleaned"])
    assert int((np.asarray(noisy.labels) != np.asarray(cleaned.labels)).sum()) == res["accepted"]
    assert res["errors_before"] - res["errors_after"] == res["accepted"]
    assert set(corr["accept"].astype(str)) <= {"yes", "no", ""}
    meta = json.loads((tmp_path / "demo" / "run" / "review.json").read_text())
    assert meta  # review step recorded its FiftyOne dataset
    preds = res["predictions"]
    assert len(preds) == 48 and "labels" in preds.columns


def test_demo_refuses_a_foreign_folder(tmp_path):
    from labelfix.demo import run_demo
    from labelfix.errors import LabelfixError

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(LabelfixError, match="not a labelfix demo folder"):
        run_demo(tmp_path, epochs=1, n_train=8, n_test=4, log=lambda m: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
