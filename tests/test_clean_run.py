"""`labelfix clean` on run directories: outputs per product.md, degenerate inputs give a
clear message or a documented fallback, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from labelfix.cli import main
from labelfix.errors import LabelfixError
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
    # a later clean without a report keeps the old one and says that it is an earlier clean's
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--max-suggestions", "3"])
    assert res.exit_code == 0 and "is an earlier clean's report, not updated (--no-report)" in res.output
    assert (run / "report" / "index.html").exists()


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


def test_clean_classes_takes_a_quoted_name_with_a_comma(tmp_path):
    truth, given, logits, flip = noisy_problem(seed=1)
    run = make_run(tmp_path / "run", given, logits, names=["dog, cat", "bird", "c2", "c3", "c4"])
    res = CliRunner().invoke(main, ["clean", str(run), "--classes", '"dog, cat", bird', "--no-report"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(run / "corrections.csv")["class"]) == {"dog, cat", "bird"}


def test_degenerate_classes_and_nan(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=2, k=6)
    given[:, 0] = 0  # a class with zero positives
    given[:, 1] = -1  # a class with all cells unknown
    loss = np.abs(np.random.default_rng(0).normal(0.5, 0.3, given.shape)).astype(np.float32)
    loss[:10, 2] = np.nan  # NaN losses
    run = make_run(tmp_path / "run", given, logits, loss_mean=loss)
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 0, res.output
    assert ("note: 3 label GMM group(s) not fitted, no known cell: c0 (positives), c1 (negatives), c1 (positives)"
            in res.output)   # named by class and label
    p = np.asarray(load_run(run).cell("p_clean"))
    assert np.isnan(p[:, 1]).all()  # unknown cells are not fitted
    assert np.isfinite(p[:, 0]).all()
    assert np.isfinite(np.asarray(load_run(run).cell("score"))).all()


def test_a_class_without_a_known_label_is_not_suggested(tmp_path):
    """An empty column (every cell unknown): a model trained on these labels outputs about
    0.5 there, and its additions filled the list (a user's journey: 24 of 24 suggestions
    'add zebra' at p 0.505)."""
    truth, given, logits, _ = noisy_problem(seed=3, k=4)
    given[:, 3] = -1
    logits[:, 3] = np.random.default_rng(1).normal(0.02, 0.01, len(given))   # the untrained output
    run = make_run(tmp_path / "run", given, logits, names=["cat", "dog", "bird", "zebra"])
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 0, res.output
    assert "1 class(es) without a known label ('zebra'): the model had nothing to learn them from" in res.output
    corr = load_run(run).corrections()
    assert len(corr) and "zebra" not in set(corr["class"])
    assert (np.asarray(load_run(run).cell("score"))[:, 3] == 0).all()
    assert (np.asarray(load_run(run).cell("suggested"))[:, 3] == -1).all()
    # known labels of the class only in validation rows: the model did not train on them either
    given2 = given.copy()
    given2[:20, 3] = 1
    run2 = make_run(tmp_path / "run2", given2, logits, names=["cat", "dog", "bird", "zebra"])
    split = np.zeros(len(given), np.int8)
    split[:40] = 1
    atomic.write_npy(run2 / "split.npy", split)
    res = CliRunner().invoke(main, ["clean", str(run2)])
    assert res.exit_code == 0 and "class(es) without a known label in the training rows ('zebra')" in res.output, \
        res.output
    # the API scores such a class when asked to: its probabilities may come from another model
    from labelfix.cleaning import find_label_issues

    probs = 1 / (1 + np.exp(-logits))
    probs[:5, 3] = 0.99
    assert (find_label_issues(given, probs).corrections["class_index"] == 3).sum() >= 5
    assert (find_label_issues(given, probs, unscored_classes=[3]).corrections["class_index"] != 3).all()
    with pytest.raises(LabelfixError, match=r"unscored_classes: \[4\]: expected class indices in \[0, 4\)"):
        find_label_issues(given, probs, unscored_classes=[4])
    with pytest.raises(LabelfixError, match=r"unscored_classes: 3: expected a list of class indices"):
        find_label_issues(given, probs, unscored_classes=3)


def test_interrupted_training_run(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=3)
    run = make_run(tmp_path / "run", given, logits, complete=False)
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "training did not finish" in res.output and "--resume" in res.output
    assert "in-sample statistics" in res.output and "--folds 4" in res.output   # not cross-fitted: said
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


def test_decision_weights_hand_computed():
    from labelfix.cleaning.calibration import decision_weights, reweight_scores

    score = np.array([0.9, 0.8, 0.9, 0.9, 0.7])
    is_add = np.array([True, True, False, False, False])
    accepted = np.array([True, True, True, False, False])
    classes = np.array([0, 1, 1, 1, 0])
    # all: r = (accepted + prior) / (score mass + prior) = (3 + 2) / (4.2 + 2); directions:
    # r_d = (accepted_d + prior r) / (mass_d + prior), removals (1 + 2 r) / (2.5 + 2), additions
    # (2 + 2 r) / (1.7 + 2); classes: r_kd = (accepted_kd + prior r_d) / (mass_kd + prior)
    r_all = 5 / 6.2
    r_rm, r_add = (1 + 2 * r_all) / 4.5, (2 + 2 * r_all) / 3.7
    r = np.array([[(0 + 2 * r_rm) / (0.7 + 2), (1 + 2 * r_add) / (0.9 + 2)],
                  [(1 + 2 * r_rm) / (1.8 + 2), (1 + 2 * r_add) / (0.8 + 2)],
                  [r_rm, r_add]])   # class 2: no decision, its directions' ratios
    w = decision_weights(score, is_add, accepted, classes, 3, prior=2)
    np.testing.assert_allclose(w, r / r.max())
    given = np.array([[1, 0, -1], [0, 1, 1]], np.int8)   # per column: the class's removal / addition weight
    np.testing.assert_allclose(reweight_scores(np.full((2, 3), 0.5), given, w),
                               0.5 * np.array([[w[0, 0], w[1, 1], w[2, 1]], [w[0, 1], w[1, 0], w[2, 0]]]), rtol=1e-6)
    # 1-D suggestions with their classes give the same weights
    np.testing.assert_allclose(reweight_scores(np.full(3, 0.5), np.array([1, 0, 1]), w, classes=[2, 2, 0]),
                               0.5 * np.array([w[2, 0], w[2, 1], w[0, 0]]), rtol=1e-6)
    # the priors keep a handful of decisions from swinging the ranking: three rejected
    # removals (two in class 0) cost that class's removals about a tenth of their score
    w = decision_weights([0.99] * 3, [False] * 3, [False] * 3, [0, 0, 1], 2)
    assert 0.85 < w[0, 0] < w[1, 0] < 0.95 and w[0, 1] == w[1, 1] == 1.0
    # a direction with few decisions is shrunk towards the pooled ratio, not towards 1:
    # a hundred removals right at 0.77 of their promise and six right additions keep the
    # removals within a tenth of the additions (0.92; shrunk towards 1 it was 0.85, and on
    # scores near 1 every addition jumped the removals)
    score = np.full(106, 0.99)
    is_add = np.arange(106) >= 100
    accepted = np.r_[np.arange(100) < 77, np.ones(6, bool)]
    w = decision_weights(score, is_add, accepted, np.zeros(106, int), 1, class_prior=np.inf)
    assert 0.85 < w[0, 0] < w[0, 1] == 1.0 and w[0, 0] > 0.9


def test_clean_learns_from_decisions_and_can_be_told_not_to(tmp_path):
    """A reviewer who accepts every addition and rejects every removal among the first
    suggestions: the next clean scales the removals down (the cell arrays and the table),
    keeps every decision, and stays sorted; --no-learn-from-decisions gives the raw scores."""
    truth, given, logits, flip = noisy_problem(seed=3, n=600)
    run = make_run(tmp_path / "run", given, logits)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0
    raw = np.array(load_run(run).cell("score"))
    corr = pd.read_csv(run / "corrections.csv")
    assert {"add", "remove"} <= set(corr["action"][:40])
    corr["accept"] = np.where(corr.index < 40, np.where(corr["action"] == "add", "yes", "no"), "")
    corr.to_csv(run / "corrections.csv", index=False)
    decided = {(i, c, s): a for i, c, s, a in zip(corr["image_id"], corr["category_id"], corr["suggested"],
                                                   corr["accept"]) if a}

    res = CliRunner().invoke(main, ["clean", str(run), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "learned from 40 of your decisions" in res.output and "lowest removals of" in res.output
    score = np.array(load_run(run).cell("score"))
    pos = given == 1
    ratios = {}
    for k in range(given.shape[1]):   # one weight per (class, direction): the order within it is kept
        for d, m in ((0, pos[:, k]), (1, ~pos[:, k])):
            m = m & (raw[:, k] > 0)
            r = score[m, k] / raw[m, k]
            assert np.allclose(r, r[0], rtol=1e-3)
            ratios[k, d] = r[0]
    assert max(v for (k, d), v in ratios.items() if d == 0) < 0.9   # removals scaled down ...
    assert max(v for (k, d), v in ratios.items() if d == 0) < min(v for (k, d), v in ratios.items() if d == 1)
    new = pd.read_csv(run / "corrections.csv", keep_default_na=False)
    assert (np.diff(new["score"].to_numpy()) <= 1e-9).all()
    kept = {(i, c, s): a for i, c, s, a in zip(new["image_id"], new["category_id"], new["suggested"], new["accept"])
            if a}
    assert kept == decided
    assert new["action"][:40].tolist().count("add") > corr["action"][:40].tolist().count("add")

    # with --max-suggestions the learning still sees every suggestion clean makes, and says so
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--max-suggestions", "10"])
    assert res.exit_code == 0, res.output
    assert ("learned from 40 of your decisions on the suggestions this clean makes, before --classes / "
            "--max-suggestions") in " ".join(res.output.split())

    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--no-learn-from-decisions"])
    assert res.exit_code == 0 and "learned from" not in res.output
    np.testing.assert_allclose(np.array(load_run(run).cell("score")), raw, rtol=1e-6)


def test_decision_precision_model():
    from labelfix.cleaning.calibration import MIN_DECISIONS, decision_precision_model

    rng = np.random.default_rng(0)
    score = rng.uniform(0.5, 1.0, 200)
    is_add = rng.random(200) < 0.5
    accepted = rng.random(200) < np.where(is_add, score, score - 0.4)   # removals less often right
    model = decision_precision_model(score, is_add, accepted)
    p = model(np.array([0.6, 0.95, 0.6, 0.95]), np.array([True, True, False, False]))
    assert p[1] > p[0] and p[3] > p[2] and p[0] > p[2] and ((0 < p) & (p < 1)).all()
    assert decision_precision_model(score[:MIN_DECISIONS - 1], is_add[:MIN_DECISIONS - 1],
                                    accepted[:MIN_DECISIONS - 1]) is None
    all_yes = decision_precision_model(score[:30], is_add[:30], np.ones(30, bool))
    assert all_yes(np.array([0.1, 0.9]), np.array([True, False])).tolist() == [31 / 32, 31 / 32]


def test_clean_reports_the_precision_it_expects_from_your_decisions(tmp_path):
    """After decisions, clean estimates from them how many of the undecided suggestions are
    right (a note and a report section); a reviewer who rejects half of them hears less
    than one who accepts them all."""
    truth, given, logits, flip = noisy_problem(seed=3, n=600)
    run = make_run(tmp_path / "run", given, logits)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0
    corr = pd.read_csv(run / "corrections.csv")
    estimates = []
    for pattern in (["yes"], ["yes", "no"]):
        corr["accept"] = [pattern[i % len(pattern)] if i < 60 else "" for i in range(len(corr))]
        corr.to_csv(run / "corrections.csv", index=False)
        res = CliRunner().invoke(main, ["clean", str(run), "--no-learn-from-decisions"])
        assert res.exit_code == 0, res.output
        note = [line for line in res.output.splitlines() if "decisions so far" in line]
        assert len(note) == 1 and f"your 60 decisions so far: {60 // len(pattern)} accepted" in note[0]
        estimates.append(float(note[0].split("estimated from them, ")[1].split(" ")[0]))
        assert "Estimated from your decisions" in (run / "report" / "index.html").read_text()
        corr = pd.read_csv(run / "corrections.csv")
    assert estimates[0] > estimates[1]


def test_known_decisions_sources(tmp_path):
    """The archive, the accept column and the App's decisions.csv, newest winning; an
    accept value edited after its import beats the App's copy."""
    from labelfix.review.decisions import ARCHIVE_COLUMNS, known_decisions

    truth, given, logits, flip = noisy_problem(seed=4, n=50, k=3)
    run = make_run(tmp_path / "run", given, logits)
    pd.DataFrame([[100, "im0.png", "c0", 1, 1, "add", 0.9, "rejected", "corrections.csv"],
                  [101, "im1.png", "c0", 1, 0, "remove", 0.9, "accepted", "fiftyone"]],
                 columns=ARCHIVE_COLUMNS).to_csv(run / "decisions_archive.csv", index=False)
    pd.DataFrame({"image_id": [100, 102, 103], "file_name": ["im0.png", "im2.png", "im3.png"],
                  "class": ["c0", "c1", "c2"], "category_id": [1, 2, 3], "given": ["0", "1", "0"],
                  "suggested": [1, 0, 1], "action": ["add", "remove", "add"], "state": "re-labeled",
                  "score": [0.9, 0.8, 0.7], "p_clean": 0.1, "probability": 0.5,
                  "accept": ["yes", "no", "yes"]}).to_csv(run / "corrections.csv", index=False)
    pd.DataFrame({"image_id": [102, 103], "file_name": ["im2.png", "im3.png"], "class": ["c1", "c2"],
                  "category_id": [2, 3], "action": ["remove", "add"], "score": [0.8, 0.7],
                  "decision": ["accepted", "rejected"], "csv_decision": ["rejected", ""]}).to_csv(
        run / "decisions.csv", index=False)
    assert known_decisions(run) == {
        (100, 1, 1): True,    # the accept column is newer than the archive
        (101, 1, 0): True,    # archive only
        (102, 2, 0): True,    # the App changed the imported "no"
        (103, 3, 1): True,    # "yes" typed after the App's import (csv_decision empty): the CSV wins
    }


def test_clean_with_run_averages_held_out_logits_and_refuses_other_labels(tmp_path):
    """--with-run: the scores equal those of one run holding the mean logits; a run on other
    labels, of another kind (cross-fitted or not) or the run itself is refused with one
    line, before anything is written."""
    truth, given, logits, flip = noisy_problem(seed=5)
    rng = np.random.default_rng(1)
    other_logits = logits + rng.normal(0, 2.0, logits.shape)
    run = make_run(tmp_path / "run", given, logits)
    other = make_run(tmp_path / "other", given, other_logits)
    mean = make_run(tmp_path / "mean", given, (logits.astype(np.float16).astype(np.float32)
                                               + other_logits.astype(np.float16).astype(np.float32)) / 2)
    res = CliRunner().invoke(main, ["clean", str(run), "--with-run", str(other), "--no-report", "--neighbours", "0"])
    assert res.exit_code == 0, res.output
    assert "the mean of this run's held-out logits and those of" in res.output
    assert CliRunner().invoke(main, ["clean", str(mean), "--no-report", "--neighbours", "0"]).exit_code == 0
    np.testing.assert_allclose(np.array(load_run(run).cell("score")), np.array(load_run(mean).cell("score")),
                               atol=2e-3)
    alone = make_run(tmp_path / "alone", given, logits)
    assert CliRunner().invoke(main, ["clean", str(alone), "--no-report", "--neighbours", "0"]).exit_code == 0
    assert not np.allclose(np.array(load_run(alone).cell("score")), np.array(load_run(run).cell("score")), atol=2e-3)

    changed = given.copy()
    changed[3, 1] = 1 - changed[3, 1]
    bad = make_run(tmp_path / "bad", changed, other_logits)
    untrained = make_run(tmp_path / "untrained", given, other_logits)
    (untrained / "stats" / "logits.npy").unlink()
    renamed = make_run(tmp_path / "renamed", given, other_logits)   # same ids, other class names
    classes = json.loads((renamed / "classes.json").read_text())
    classes[1]["name"] = "something else"
    (renamed / "classes.json").write_text(json.dumps(classes))
    before = (run / "corrections.csv").read_bytes()
    for args, message in (([str(bad)], "its given labels differ"), ([str(run)], "names the run being cleaned"),
                          ([str(tmp_path / "nowhere")], "run directory not found"),
                          ([str(untrained)], "no stats/logits.npy"),
                          ([str(renamed)], "its classes are not")):
        res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--with-run", *args])
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    crossfit = make_run(tmp_path / "crossfit", given, other_logits)
    atomic.write_json(crossfit / "stats" / "state.json", {"epochs_recorded": 3, "last_epoch": 3, "complete": True,
                                                          "out_of_sample": True, "rounds": 1})
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--with-run", str(crossfit)])
    assert res.exit_code == 2 and "one run is cross-fitted" in res.output
    # the same run twice (also through a link) would count twice in the mean
    (tmp_path / "link").symlink_to(other)
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--with-run", str(other),
                                    "--with-run", str(tmp_path / "link")])
    assert res.exit_code == 2 and "names the same run twice" in res.output, res.output
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--with-run", str(tmp_path / "nowhere")])
    assert res.output.startswith("error: --with-run: ")
    assert (run / "corrections.csv").read_bytes() == before


@pytest.mark.parametrize("array, message", [
    (np.full((3, 3), "abc"), "dtype <U3: expected numbers"),
    (np.zeros((400, 5), np.complex64), "dtype complex64: expected numbers"),
])
def test_statistics_of_another_dtype_are_refused(tmp_path, array, message):
    truth, given, logits, _ = noisy_problem(seed=4)
    run = make_run(tmp_path / "run", given, logits)
    np.save(run / "stats" / "logits.npy", array)
    res = CliRunner().invoke(main, ["clean", str(run)])
    assert res.exit_code == 2 and message in res.output and "logits.npy" in res.output, res.output


def test_corrupt_round_statistics_of_a_cross_fitted_run_give_one_line(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=4)
    run = make_run(tmp_path / "run", given, logits)
    atomic.write_json(run / "stats" / "state.json", {"epochs_recorded": 3, "last_epoch": 3, "complete": True,
                                                     "out_of_sample": True, "rounds": 1})
    (run / "stats" / "round1").mkdir()
    from labelfix.cleaning.clean_run import fold_ensemble_logits, management_losses
    from labelfix.errors import LabelfixError
    from labelfix.run import Run

    (run / "stats" / "round1" / "logits.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(LabelfixError, match="round1/logits.npy: unreadable array"):
        management_losses(Run(run))
    np.save(run / "stats" / "round1" / "logits.npy", np.zeros((7, 5), np.float16))
    with pytest.raises(LabelfixError, match="round1/logits.npy: shape .* does not match the labels"):
        management_losses(Run(run))
    atomic.write_text(run / "config.yaml", "train:\n  data: data.json\n  folds: 3\n  loss: bce\n")
    with pytest.raises(LabelfixError, match="folds.npy: missing in a cross-fitted run"):
        fold_ensemble_logits(Run(run))
    np.save(run / "folds.npy", np.zeros(3, np.int8))
    with pytest.raises(LabelfixError, match=r"folds.npy: dtype int8, shape \(3,\): expected integer folds"):
        fold_ensemble_logits(Run(run))


def _decide(run, edit):
    """Decide the first three suggestions of a cleaned run in its CSV, then ``edit`` it."""
    corr = pd.read_csv(run / "corrections.csv", dtype=str, keep_default_na=False)
    corr["accept"] = ["yes", "no", "yes"] + [""] * (len(corr) - 3)
    edit(corr)
    corr.to_csv(run / "corrections.csv", index=False)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.__setitem__("accept", ["maybe"] + list(c["accept"][1:])), "row 2: accept must be"),
    (lambda c: c.rename(columns={"accept": "Accept"}, inplace=True), "column 'Accept': the decisions column"),
    (lambda c: c.__setitem__("image_id", ["999999"] + list(c["image_id"][1:])), "row 2: image_id 999999 is not an image of the run"),
])
def test_clean_refuses_a_corrections_file_whose_decisions_it_cannot_keep(tmp_path, edit, message):
    """A hand-edited corrections.csv that export coco would refuse is refused by clean too,
    before anything is written: its decisions are never dropped silently."""
    truth, given, logits, _ = noisy_problem(seed=6)
    run = make_run(tmp_path / "run", given, logits)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0
    _decide(run, edit)
    before = {p.name: p.read_bytes() for p in [run / "corrections.csv", *sorted((run / "cells").iterdir())]}
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--clean-threshold", "0.9"])
    assert res.exit_code == 2 and message in res.output and "re-run clean" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in [run / "corrections.csv", *sorted((run / "cells").iterdir())]} == before


def test_clean_checks_every_decision_file_before_writing_and_ignores_files_without_decisions(tmp_path):
    truth, given, logits, _ = noisy_problem(seed=6)
    run = make_run(tmp_path / "run", given, logits)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0
    # the App's decisions.csv with a bad value: refused before anything is written
    corr = pd.read_csv(run / "corrections.csv")
    pd.DataFrame({"image_id": corr["image_id"][:1], "class": corr["class"][:1], "category_id": corr["category_id"][:1],
                  "action": corr["action"][:1], "decision": ["maybe"]}).to_csv(run / "decisions.csv", index=False)
    before = {p.name: p.read_bytes() for p in [run / "corrections.csv", *sorted((run / "cells").iterdir())]}
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--clean-threshold", "0.9",
                                    "--no-learn-from-decisions"])
    assert res.exit_code == 2 and "decisions.csv" in res.output and "maybe" in res.output, res.output
    assert {p.name: p.read_bytes() for p in [run / "corrections.csv", *sorted((run / "cells").iterdir())]} == before
    (run / "decisions.csv").unlink()
    # a corrections.csv without decisions is replaced whatever else is wrong with it
    corr.drop(columns=["category_id"]).to_csv(run / "corrections.csv", index=False)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0
    assert "category_id" in pd.read_csv(run / "corrections.csv").columns


def test_clean_keeps_decisions_written_by_a_spreadsheet_as_floats(tmp_path):
    """A spreadsheet that saves numbers as 1.0 / 0.0 / 526.0 (ids, suggested, accept):
    the decisions are kept, also for suggestions that are no longer made (they go to the
    archive)."""
    truth, given, logits, _ = noisy_problem(seed=6)
    run = make_run(tmp_path / "run", given, logits)
    assert CliRunner().invoke(main, ["clean", str(run), "--no-report"]).exit_code == 0

    def as_floats(c):
        for col in ("suggested", "image_id", "category_id"):
            c[col] = [f"{float(v):.1f}" for v in c[col]]
        c["accept"] = [{"yes": "1.0", "no": "0.0"}.get(v, v) for v in c["accept"]]

    _decide(run, as_floats)
    decided = pd.read_csv(run / "corrections.csv").head(3)
    res = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--max-suggestions", "1"])
    assert res.exit_code == 0, res.output
    from labelfix.review.decisions import known_decisions

    known = known_decisions(run)
    for rec, accepted in zip(decided.to_dict("records"), (True, False, True)):
        assert known[(rec["image_id"], rec["category_id"], int(rec["suggested"]))] == accepted


def test_last_clean_options_round_trip_and_refuse_a_corrupt_file(tmp_path):
    from labelfix.cleaning.clean_run import clean_run, last_clean_options
    from labelfix.errors import LabelfixError

    truth, given, logits, _ = noisy_problem(seed=6)
    run = make_run(tmp_path / "run", given, logits)
    assert last_clean_options(run) == {}
    first = clean_run(run, report=False, max_suggestions=7, classes=["c1", "c2"], scorer="disagreement",
                      neighbours=0)
    options = last_clean_options(run)
    assert (options["max_suggestions"], options["classes"], options["scorer"], options["report"]) == (
        7, ["c1", "c2"], "disagreement", False)
    again = clean_run(run, **options)
    pd.testing.assert_frame_equal(again.corrections, first.corrections)
    (run / "cells" / "clean.json").write_text("{not json")
    with pytest.raises(LabelfixError, match="clean.json: corrupt JSON"):
        last_clean_options(run)
    (run / "cells" / "clean.json").write_text('{"bogus": 1}')
    with pytest.raises(LabelfixError, match="not the options of a labelfix clean"):
        last_clean_options(run)


def test_a_run_without_its_training_dynamics_says_what_replaces_them(tmp_path):
    """stats/loss_mean.npy missing (a damaged or hand-made run): clean says that the BCE of
    the final logits replaces it (before: a silent fallback that changes the suggestions)."""
    from labelfix.cleaning.clean_run import clean_run

    truth, given, logits, _ = noisy_problem(seed=3)
    without = clean_run(make_run(tmp_path / "without", given, logits), report=False, scorer="loss")
    assert any("stats/loss_mean.npy is missing: the training dynamics" in n and "in --score loss" in n
               for n in without.notes)
    with_it = clean_run(make_run(tmp_path / "with", given, logits, loss_mean=np.ones(given.shape)), report=False)
    assert not any("loss_mean.npy is missing" in n for n in with_it.notes)
