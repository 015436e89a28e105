"""`labelfix clean` on run directories: outputs per product.md, degenerate inputs give a
clear message or a documented fallback, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from labelfix.cli import main
from labelfix.io import atomic
from labelfix.labels import LabelSet
from labelfix.run import CORRECTIONS_COLUMNS, load_run


def make_run(path, given, logits, loss_mean=None, complete=True, names=None):
    n, k = given.shape
    ls = LabelSet(
        given.astype(np.int8),
        pd.DataFrame({"image_id": np.arange(100, 100 + n), "file_name": [f"im{i}.png" for i in range(n)],
                      "width": 0, "height": 0}),
        pd.DataFrame({"name": names or [f"c{j}" for j in range(k)], "category_id": np.arange(1, k + 1)}),
        path,
        {"format": "test"},
    )
    ls.save(path)
    atomic.write_npy(path / "stats" / "logits.npy", logits.astype(np.float16))
    if loss_mean is not None:
        atomic.write_npy(path / "stats" / "loss_mean.npy", loss_mean.astype(np.float32))
    if complete is not None:
        atomic.write_json(path / "stats" / "state.json",
                          {"epochs_recorded": 3, "last_epoch": 3 if complete else 1, "complete": complete})
    return path


def noisy_problem(seed=0, n=400, k=5, noise=0.15):
    """A model that knows the truth well, and given labels with flipped cells."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < 0.3).astype(np.int8)
    given = truth.copy()
    flip = rng.random((n, k)) < noise
    given[flip] = 1 - given[flip]
    logits = np.where(truth == 1, 3.0, -3.0) + rng.normal(0, 1.0, (n, k))
    return truth, given, logits, flip


def test_clean_writes_contract_outputs(tmp_path):
    truth, given, logits, flip = noisy_problem()
    run = make_run(tmp_path / "run", given, logits)
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 0, res.output
    corr = pd.read_csv(run / "corrections.csv", dtype={"given": str})
    assert list(corr.columns) == CORRECTIONS_COLUMNS
    assert (np.diff(corr["score"].to_numpy()) <= 1e-9).all()  # sorted by score
    assert set(corr["action"]) <= {"add", "remove"}
    assert ((corr["action"] == "add") == (corr["suggested"] == 1)).all()
    assert set(corr["image_id"]) <= set(range(100, 500))
    r = load_run(run)
    for name in ("p_clean", "score", "state", "suggested"):
        assert r.cell(name).shape == given.shape
    score = np.asarray(r.cell("score"))
    assert score.min() >= 0 and score.max() <= 1
    # the flipped cells are found: precision and recall well above a constant rule
    rows = corr["image_id"].to_numpy() - 100
    cols = corr["category_id"].to_numpy() - 1
    hit = flip[rows, cols]
    assert hit.mean() > 0.8 and hit.sum() / flip.sum() > 0.6
    assert (run / "report" / "index.html").exists()
    for png in ("loss_gmms.png", "suggestions_per_class.png", "noise_rate_per_class.png", "score_distribution.png"):
        assert (run / "report" / png).stat().st_size > 1000


def test_clean_options(tmp_path):
    truth, given, logits, flip = noisy_problem(seed=1)
    run = make_run(tmp_path / "run", given, logits)
    res = CliRunner().invoke(main, ["clean", str(run), "--classes", "c1,c3", "--max-suggestions", "7", "--no-report"])
    assert res.exit_code == 0, res.output
    corr = pd.read_csv(run / "corrections.csv")
    assert len(corr) == 7 and set(corr["class"]) <= {"c1", "c3"}
    assert not (run / "report").exists()
    res = CliRunner().invoke(main, ["clean", str(run), "--classes", "nope"])
    assert res.exit_code == 2 and "unknown class names nope" in res.output


def test_degenerate_classes_and_nan(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=2, k=6)
    given[:, 0] = 0  # a class with zero positives
    given[:, 1] = -1  # a class with all cells unknown
    loss = np.abs(np.random.default_rng(0).normal(0.5, 0.3, given.shape)).astype(np.float32)
    loss[:10, 2] = np.nan  # NaN losses
    run = make_run(tmp_path / "run", given, logits, loss_mean=loss)
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 0, res.output
    assert "note: GMM group" in res.output  # the fallback is reported with counts
    p = np.asarray(load_run(run).cell("p_clean"))
    assert np.isnan(p[:, 1]).all()  # unknown cells are not fitted
    assert np.isfinite(p[:, 0]).all()
    assert np.isfinite(np.asarray(load_run(run).cell("score"))).all()


def test_interrupted_training_run(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=3)
    run = make_run(tmp_path / "run", given, logits, complete=False)
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "training did not finish" in res.output and "--resume" in res.output
    assert "neighbour evidence skipped" in res.output   # no embedding: said, not silent
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--neighbours", "0"])
    assert res.exit_code == 0 and "neighbour evidence skipped" not in res.output
    (run / "stats" / "logits.npy").unlink()
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 2
    assert "logits.npy: missing; run `labelfix train` first" in res.output


def test_not_a_run(tmp_path):
    res = CliRunner().invoke(main, ["clean", str(tmp_path)])
    assert res.exit_code == 2 and "not a labelfix run directory" in res.output


def test_corrupt_stats_shape(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=4)
    run = make_run(tmp_path / "run", given, logits)
    atomic.write_npy(run / "stats" / "logits.npy", np.zeros((3, 3), np.float16))
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 2 and "does not match the labels" in res.output
