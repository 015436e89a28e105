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
    res = run_demo(tmp_path / "demo", epochs=1, n_train=96, n_test=48, rounds=1, folds=2, log=lines.append)
    assert int(np.load(res["run"] / "folds.npy").max()) == 1   # --folds reaches the training
    # a second run replaces the folder of the first (the marker says it is a demo folder)
    lines.clear()
    res = run_demo(tmp_path / "demo", epochs=2, later_epochs=1, n_train=200, n_test=48, review_budget=30,
                   review_batch=12, log=lines.append)
    from labelfix.train.config import read_run_config

    # round 1 trains --epochs, later rounds (cleaner labels) --later-epochs
    assert [read_run_config(tmp_path / "demo" / f"run{r}").epochs for r in (1, 2)] == [2, 1]
    steps = [ln.split("]")[0] + "]" for ln in lines if ln.startswith("[")]
    # train, clean, three review batches (12 + 12 + 6), the FiftyOne step in the last round, the summary
    assert steps == ["[data]"] + ["[round 1/2]"] * 6 + ["[round 2/2]"] * 7 + ["[export]"]
    batches = [ln for ln in lines if "review batch" in ln]
    assert [ln.split(": ")[1].split(" right")[0].split(" of ")[1] for ln in batches] == ["12", "12", "6"] * 2
    assert all(("learning from the decisions" in ln) == (" batch 1:" not in ln) for ln in batches)
    assert sum("epoch 1 " in ln for ln in lines) == 4 * 2 * 2   # a line per epoch: 4 folds x 2 rounds, 2 review rounds
    # round 2 trusts what the reviewer decided in round 1: those cells are verified, none suggested again
    r1, r2 = res["rounds"]
    assert r1["verified"] == 0 and r2["verified"] == r1["reviewed"] > 0 and r2["verified_suggested"] == 0
    assert res["errors"][1] == res["errors"][0] - r1["accepted"] and res["errors"][2] == res["errors"][1] - r2["accepted"]
    run = load_run(res["run"])
    corr = run.corrections()
    assert len(corr) == res["suggestions"]
    # the cleaned file differs from the noisy one exactly by the accepted suggestions,
    # and accepting only right ones (the simulated reviewer) removes that many errors
    previous = read_labels(tmp_path / "demo" / "cleaned_round1.json")
    cleaned = read_labels(res["cleaned"])
    assert int((np.asarray(previous.labels) != np.asarray(cleaned.labels)).sum()) == res["accepted"]
    assert set(corr["accept"].fillna("").astype(str)) <= {"yes", "no", ""}
    assert int(corr["accept"].isin(["yes", "no"]).sum()) == r2["reviewed"] == 30
    meta = json.loads((res["run"] / "review.json").read_text())
    assert meta  # review step recorded its FiftyOne dataset
    preds = res["predictions"]
    assert len(preds) == 48 and "labels" in preds.columns


def test_demo_refuses_a_foreign_folder(tmp_path):
    from labelfix.demo import run_demo
    from labelfix.errors import LabelfixError

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(LabelfixError, match="not a labelfix demo folder"):
        run_demo(tmp_path, epochs=1, n_train=8, n_test=4, log=lambda m: None)
    with pytest.raises(LabelfixError, match="later_epochs: one review round trains `epochs` only"):
        run_demo(tmp_path / "new", rounds=1, later_epochs=3, log=lambda m: None)
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_data_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """make_demo writes its images and COCO files as one output set: interrupted half-way
    (here: the 6th image fails to encode), it leaves no image and no COCO file behind."""
    from PIL import Image

    from labelfix.data.demo import make_demo

    real_save, calls = Image.Image.save, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_demo(tmp_path / "data", n_train=8, n_test=4, size=32, seed=0)
    assert sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file()) == []
    monkeypatch.setattr(Image.Image, "save", real_save)
    paths = make_demo(tmp_path / "data", n_train=8, n_test=4, size=32, seed=0)
    assert len(list(paths["images"].glob("*.png"))) == 12 and paths["train"].exists() and paths["test"].exists()


def test_demo_progress_shows_every_fifth_epoch_and_whole_embeddings():
    """The demo's training lines: epoch 1, every 5th and the last of each fold model, the
    start and end of an embedding (its 554 lines had 284 per-epoch lines before)."""
    from labelfix.demo import progress_lines

    shown = []
    say = progress_lines(shown.append, epochs=14)
    for e in range(1, 15):
        say(f"cross-fitting round 1/2, fold 1/4: epoch {e}  train_loss 0.5  lr 1e-2  1.0s")
    for line in ("fold 1/4: embedding 1200 images -> x/embeddings.npy", "fold 1/4:   embedded 1024/1200",
                 "fold 1/4:   embedded 1200/1200", "fold 1/4: training on 900 images, holding out 300"):
        say(line)
    epochs = [int(ln.split("epoch ")[1].split()[0]) for ln in shown if ": epoch " in ln]
    assert epochs == [1, 5, 10, 14]
    assert [ln.strip() for ln in shown if ": epoch " not in ln] == [
        "fold 1/4: embedding 1200 images -> x/embeddings.npy", "fold 1/4:   embedded 1200/1200",
        "fold 1/4: training on 900 images, holding out 300"]
