"""The benchmark scripts' own logic (benchmarks/*.py): what their tables are computed from
and the bad arguments they refuse. The scripts' full runs are the benchmarks themselves;
here only the pieces that decide a number or a refusal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import api_vs_cleanlab
        import detection
        import discount_sweep
        import frozen_heads
        import mix_vs_bce
        import reference
        import report
        import review_loop
        import review_rounds
        import seed_average
        yield {"api_vs_cleanlab": api_vs_cleanlab, "detection": detection, "discount_sweep": discount_sweep, "report": report,
               "review_loop": review_loop, "review_rounds": review_rounds, "mix_vs_bce": mix_vs_bce,
               "reference": reference, "frozen_heads": frozen_heads, "seed_average": seed_average}
    finally:
        sys.path.remove(str(BENCH))


def _row(seed, ap, noise="flip:0.2"):
    return {"dataset": "digits", "mode": "frozen", "noise": noise, "seed": seed, "labelfix": ap}


def test_with_earlier_adds_other_seeds_and_keeps_this_runs_rows(bench_modules):
    with_earlier = bench_modules["detection"].with_earlier
    now = pd.DataFrame([_row(1, 0.7)])
    earlier = pd.DataFrame([_row(0, 0.5), _row(1, 0.1), _row(0, 0.9, noise="mislabel:0.4")])
    both = with_earlier(now, [earlier])
    # seed 0 of the same setting joins; the earlier seed 1 is replaced by this run's; the
    # setting this run does not have stays out
    assert both[["noise", "seed", "labelfix"]].values.tolist() == [["flip:0.2", 0, 0.5], ["flip:0.2", 1, 0.7]]
    assert with_earlier(now, []) is now
    # two earlier folders with the same setting and seed (a re-run): the one named later wins
    rerun = pd.DataFrame([_row(0, 0.6)])
    both = with_earlier(now, [earlier, rerun])
    assert both[["noise", "seed", "labelfix"]].values.tolist() == [["flip:0.2", 0, 0.6], ["flip:0.2", 1, 0.7]]


def test_detection_summary_names_the_commits_that_trained_its_runs(bench_modules):
    det = bench_modules["detection"]

    def rows(seed, commit):
        return [dict(noise="flip:0.2", kind="flip", seed=seed, task="detection", method=m, metric="ap",
                     value=v, commit=commit) for m, v in (("labelfix", 0.7), ("cleanlab", 0.6), ("loss", 0.5))]

    one = det.collect(pd.DataFrame(rows(0, "abc1234") + rows(1, "abc1234")), "digits", "frozen")
    assert one["commits"].tolist() == ["abc1234", "abc1234"]
    assert "Runs trained by labelfix commit abc1234." in det.summary(one)
    assert "(4 folds x 3 rounds," in det.summary(one, 4, 3)   # --set rounds=3 is said, not "2 rounds"
    mixed = det.collect(pd.DataFrame(rows(0, "abc1234") + rows(1, "def5678+dirty")), "digits", "frozen")
    assert "commits abc1234, def5678+dirty (several code states" in det.summary(mixed)
    old = det.collect(pd.DataFrame(rows(0, "x")).drop(columns="commit"), "digits", "frozen")
    assert "Runs trained by" not in det.summary(old)   # a results.csv from before commits were recorded


def test_detection_summary_shows_the_reference_and_its_room_over_cleanlab(bench_modules):
    """With --reference the table gains the reference's AP (fold models trained on the
    true labels) and its margin over cleanlab per seed; the goal still compares labelfix
    with cleanlab and the loss ranking only. Unknown-error noise is scored over the
    unknown cells (ap_unknown), for the reference too."""
    det = bench_modules["detection"]
    rows = [dict(noise="missing:0.5", kind="missing", seed=seed, task="detection", method=m, metric=metric,
                 value=v + (0.0 if metric == "ap_unknown" else 0.5), commit="abc1234")
            for seed, ref in ((0, 0.62), (1, 0.66))
            for m, v in (("labelfix", 0.61), ("cleanlab", 0.60), ("loss", 0.5), ("reference", ref))
            for metric in ("ap", "ap_unknown")]
    table = det.collect(pd.DataFrame(rows), "digits", "frozen")
    text = det.summary(table)
    assert "| reference | reference - cleanlab |" in text
    assert "| 0.640 | +0.040 (min +0.020) |" in text   # ap_unknown: (0.62 + 0.66) / 2 - 0.60
    assert "| not met |" in text
    plain = det.summary(table.drop(columns="reference"))
    assert "reference" not in plain


def test_reference_scores_each_noise_with_its_headline_metric(bench_modules):
    """Probabilities equal to the true labels rank every error first under each noise
    (AP 1 over all cells for flips, over the unknown cells for missing labels); a model
    that knows nothing ranks them at the error rate of the scored cells."""
    from labelfix.data.noise import inject_noise

    score = bench_modules["reference"].score
    rng = np.random.default_rng(7)   # not the noise's seed 0: its draws would pick the same cells
    true = (rng.random((300, 5)) < 0.3).astype(np.int8)
    sure = np.where(true == 1, 0.95, 0.05).astype(np.float32)   # right about every cell
    rows = score(true, sure, ["flip:0.2", "missing:0.5"], seed=0)
    assert [(r["noise"], r["seed"], r["reference"]) for r in rows] == [("flip:0.2", 0, 1.0), ("missing:0.5", 0, 1.0)]
    flat = score(true, np.full(true.shape, 0.5, np.float32), ["missing:0.5"], seed=0)[0]["reference"]
    unknown = inject_noise(true, "missing", 0.5, 0).labels == -1
    assert flat == pytest.approx((true[unknown] == 1).mean())


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--first-seed", "-1"], "--first-seed at least 0"),
    (["--include-results", "{tmp}/nothing"], "no results.csv"),
    (["--include-results", "{tmp}/out"], "is --out itself"),
    (["--set", "prior_bias"], "expected KEY=VALUE"),
])
def test_detection_refuses_bad_arguments_before_training(bench_modules, tmp_path, args, message):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("dataset\n")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out"), "--datasets", ""]
    with pytest.raises(SystemExit) as err:
        bench_modules["detection"].main(argv)
    assert message in str(err.value)


def test_set_options_are_yaml_values_of_train_config_fields(bench_modules):
    import folds_sweep

    assert folds_sweep.parse_sets(["prior-bias=true", "epochs=3", "loss=an"]) == \
        {"prior_bias": True, "epochs": 3, "loss": "an"}


def test_review_loop_plain_is_the_top_of_the_ranking_and_learning_skips_a_wrong_direction(bench_modules):
    review = bench_modules["review_loop"].review
    n = 400
    score = np.linspace(1.0, 0.0, n)
    is_add = np.arange(n) % 2 == 0          # additions and removals interleaved by score
    right = is_add.copy()                   # every addition right, every removal wrong
    classes = np.zeros(n, dtype=int)
    plain = review(score, is_add, classes, right, budget=100, batch=20, prior=None)
    assert plain == pytest.approx(right[:100].mean())
    learned = review(score, is_add, classes, right, budget=100, batch=20, prior=5.0)
    assert learned > plain + 0.2   # after the first batch, removals sink below the additions


def test_discounted_score(bench_modules):
    discounted = bench_modules["discount_sweep"].discounted
    evidence = np.array([[0.8, 0.6, 0.4]], np.float32)
    p_clean = np.array([[1.0, 0.5, np.nan]], np.float32)
    known = np.array([[True, True, False]])
    assert np.array_equal(discounted(evidence, p_clean, known, 0.0), evidence)
    np.testing.assert_allclose(discounted(evidence, p_clean, known, 0.5), [[0.4, 0.45, 0.4]], rtol=1e-6)
    # an unknown cell keeps its evidence; a NaN p_clean counts as clean on a known cell
    # (as in labelfix.cleaning.scores.score_evidence_gmm)
    np.testing.assert_allclose(discounted(evidence, np.full((1, 3), np.nan, np.float32), known, 1.0),
                               [[0.0, 0.0, 0.4]], rtol=1e-6)


def test_discounted_score_is_evidence_gmm_at_its_discount(bench_modules):
    from labelfix.cleaning.scores import CLEAN_DISCOUNT, score_evidence, score_evidence_gmm

    rng = np.random.default_rng(0)
    given = rng.choice(np.array([1, 0, -1], np.int8), (50, 4))
    probs, p_clean = rng.random((50, 4)).astype(np.float32), rng.random((50, 4)).astype(np.float32)
    p_clean[given == -1] = np.nan
    ours = bench_modules["discount_sweep"].discounted(score_evidence(given, probs=probs), p_clean, given != -1,
                                                      CLEAN_DISCOUNT)
    np.testing.assert_allclose(ours, score_evidence_gmm(given, probs=probs, p_clean=p_clean), rtol=1e-6)


def test_write_results_writes_json_and_markdown(bench_modules, tmp_path, monkeypatch, capsys):
    report = bench_modules["report"]
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    path = report.write_results("x", pd.DataFrame([{"a": 1, "b": 0.5}]), "# table\n")
    assert path == tmp_path / "x.md" and path.read_text() == "# table\n"
    assert json.loads((tmp_path / "x.json").read_text()) == [{"a": 1, "b": 0.5}]
    assert "# table" in capsys.readouterr().out


def test_review_rounds_summary_compares_errors_fixed_per_decision(bench_modules):
    row = {"seed": 0, "errors_before": 100, "two_rounds_decided": 40, "two_rounds_accepted": 30,
           "round1_accepted": 18, "round2_accepted": 12, "two_rounds_errors_after": 70,
           "one_round_decided": 40, "one_round_accepted": 20, "one_round_errors_after": 80}
    text = bench_modules["review_rounds"].summarise(pd.DataFrame([row]), 20, 10, "cmd", 1.0)
    assert "| 0 | 100 | 30 (18 + 12) / 40 = 0.750 | 70 | 20 / 40 = 0.500 | 80 |" in text
    assert "two rounds 0.750, one round 0.500 (ratio 1.50)" in text


def test_mix_vs_bce_rows_name_the_commit_that_trained_their_run(bench_modules, tmp_path):
    """A reused run folder reports the commit recorded when it was trained, not the
    current one (rows of one table can come from different code states)."""
    m = bench_modules["mix_vs_bce"]
    assert m._trained_by(tmp_path) == "unknown"   # a folder from before commits were recorded
    (tmp_path / "bench_commit.txt").write_text("abc1234+dirty\n")
    assert m._trained_by(tmp_path) == "abc1234+dirty"
    head = m._head_commit()
    assert head == "" or head.split("+")[0].isalnum()


def test_train_overhead_refuses_unknown_methods_and_times_the_mixing_functions(monkeypatch, capsys):
    """benchmarks/train_overhead.py: an unknown --methods name stops with argparse's one line
    before anything trains; the call-by-call timing gives the mixing functions' share of a
    training step."""
    import argparse

    sys.path.insert(0, str(BENCH))
    try:
        import train_overhead
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["train_overhead.py", "--methods", "logicmix,nosuchmix"])
    with pytest.raises(SystemExit):
        train_overhead.main()
    assert "--methods: unknown ['nosuchmix']" in capsys.readouterr().err
    got = train_overhead.mixing_share_of_step(argparse.Namespace(batch_size=4, size=16, backbone="test_resnet"),
                                              alternations=3)
    assert set(got["ms"]) == {"step", "logicmix", "mixup"} and all(v > 0 for v in got["ms"].values())
    assert got["share_of_step"]["logicmix"] == pytest.approx(got["ms"]["logicmix"] / got["ms"]["step"])


def test_frozen_heads_round_2_changes_the_most_doubtful_cells_of_each_class_and_value(bench_modules):
    hide_or_flip = bench_modules["frozen_heads"].hide_or_flip
    labels = np.array([[1, 0]] * 5 + [[0, 1]] * 5, np.int8)
    probs = np.zeros((10, 2))
    probs[:5, 0] = [0.9, 0.8, 0.7, 0.1, 0.45]     # given 1: doubts 0.1 0.2 0.3 0.9 0.55
    probs[5:, 0] = [0.1, 0.2, 0.3, 0.4, 0.95]     # given 0: doubts ... 0.95
    probs[:, 1] = 1 - labels[:, 1]                # every cell of class 1 fully doubted
    hidden = hide_or_flip(labels, probs, "hide", share=0.2)
    # the top 20 % of each (class, given value) group, and only above 0.5 doubt
    assert hidden[:, 0].tolist() == [1, 1, 1, -1, 1, 0, 0, 0, 0, -1]
    flipped = hide_or_flip(labels, probs, "flip", share=0.2)
    assert flipped[:, 0].tolist() == [1, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    assert (hidden[:, 1] == -1).sum() == 0    # ties at the cut: nothing is strictly above it


def test_frozen_heads_every_variant_gives_held_out_probabilities(bench_modules):
    fh = bench_modules["frozen_heads"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    true = (x[:, :2] > 0).astype(np.int8)
    noisy = true.copy()
    noisy[:6, 0] = 1 - noisy[:6, 0]
    folds = fh.random_folds(48, 4, seed=0)
    assert np.bincount(folds).tolist() == [12] * 4
    probs = fh.run_variants(x, noisy, true, folds, dict(epochs=2, lr=1e-2, batch_size=16))
    assert list(probs) == fh.VARIANTS
    for name, p in probs.items():
        assert p.shape == noisy.shape and np.all((p > 0) & (p < 1)), name


def test_seed_average_table_compares_averaged_labelfix_with_averaged_cleanlab(bench_modules, tmp_path):
    sa = bench_modules["seed_average"]
    with pytest.raises(SystemExit, match="at least 2"):
        sa.main(["--runs", str(tmp_path), "--seeds-averaged", "1"])
    frame = pd.DataFrame([
        {"dataset": "digits", "mode": "frozen", "noise": "flip_0.2", "seed": s, "labelfix": 0.60 + s / 100,
         "labelfix, 3 seeds": 0.70, "cleanlab": 0.50, "cleanlab, 3 splits": 0.66 + s / 50, "extra_train_seconds": 10.0}
        for s in (0, 1)])
    text = sa.markdown(frame, 3, 5.0, ["--runs", "OUT"])
    assert "| digits | frozen | flip_0.2 | 0.605 | 0.700 | 0.500 | 0.670 | +0.030 |" in text
    assert "20 s for 4 more runs" in text


@pytest.mark.parametrize("script", ["frozen_heads", "seed_average"])
def test_scripts_over_detection_runs_refuse_a_folder_without_them(bench_modules, tmp_path, script):
    main = bench_modules[script].main
    with pytest.raises(SystemExit, match="not a folder"):
        main(["--runs", str(tmp_path / "absent")])
    (tmp_path / "digits" / "frozen" / "runs" / "flip_0.2").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no runs of modes frozen and noises flip_0.2,? mislabel_0.4"):
        main(["--runs", str(tmp_path)])
    run = tmp_path / "digits" / "frozen" / "runs" / "flip_0.2" / "seed0" / "labelfix"
    run.mkdir(parents=True)
    (run / "images.csv").write_text("image_id,file_name,width,height\n")
    with pytest.raises(SystemExit, match=r"data/digits/train.json: not found"):
        main(["--runs", str(tmp_path)])


def test_api_benchmark_noise_and_precision_at_recall(bench_modules):
    m = bench_modules["api_vs_cleanlab"]
    x, true, noisy = m.make_data(6, "missing:0.3", seed=0, n=400)
    assert x.shape == (400, 20) and noisy.shape == true.shape == (400, 6)
    changed = noisy != true
    assert changed.any() and (true[changed] == 1).all()   # missing: positives turned negative only
    x, true, noisy = m.make_data(6, "flip:0.2", seed=0, n=400)
    assert {0, 1} == set(true[noisy != true].tolist())   # flips go both ways
    assert abs((noisy != true).mean() - 0.2) < 0.03
    # a ranking walked down until it holds half of the 4 wrong cells: the top 3, 2 wrong
    # (the library function the benchmark calls)
    from labelfix.bench.metrics import precision_at_recall

    score = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    wrong = np.array([[True, False, True, True, False, True]])
    given, true = np.zeros_like(wrong, np.int8), wrong.astype(np.int8)
    assert precision_at_recall(given, true, score, 0.5) == pytest.approx(2 / 3)
    assert precision_at_recall(given, true, score, 1.0) == pytest.approx(4 / 6)
