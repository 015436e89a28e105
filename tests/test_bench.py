"""labelfix bench: detection metrics against hand-computed cases, the baselines against
cleanlab itself, and a tiny end-to-end benchmark on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from labelfix.bench.baselines import cleanlab_issues, loss_ranking
from labelfix.bench.metrics import (average_precision, detection_metrics, error_cells, precision_at_recall,
                                    suggestion_cells)
from labelfix.bench.runner import goals, mean_std, parse_noise, read_results, run_bench
from labelfix.errors import LabelfixError

# r0: a missing positive (0 -> 1) and a missing unknown positive; r1: a wrong positive;
# r2: no error at all (its high score on an unknown negative is a false alarm)
GIVEN = np.array([[1, 0, -1], [0, 1, -1], [0, 0, -1]], np.int8)
TRUE = np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]], np.int8)
SCORE = np.array([[0.5, 0.9, 0.8], [0.7, 0.3, 0.2], [0.05, 0.6, 0.95]])
SUGGESTED = np.array([[1, 1, -1], [1, 1, 0], [0, 0, -1]], np.int8)


def test_error_and_suggestion_cells():
    assert error_cells(GIVEN, TRUE).tolist() == [[False, True, True], [False, True, False], [False, False, False]]
    # (1, 0): 0 -> 1 is a suggestion; unknown suggested 0 / -1 are not
    assert suggestion_cells(GIVEN, SUGGESTED).tolist() == [[False, True, False], [True, False, False],
                                                           [False, False, False]]


def test_detection_metrics_hand_computed():
    m = detection_metrics(GIVEN, TRUE, SCORE, SUGGESTED)
    assert (m["errors"], m["suggestions"], m["correct"]) == (3, 2, 1)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.4)
    # ranking .95N .9P .8P .7N .6N .5N .3P .2N .05N -> (1/2 + 2/3 + 3/7) / 3
    assert m["ap"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 7) / 3)
    # add population (given 0 / unknown): .95N .9P .8P .7N .6N .2N .05N
    assert m["ap_add"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # remove population (given 1): .5N (0,0) .3P (1,1)
    assert m["ap_remove"] == pytest.approx(0.5)
    assert (m["errors_add"], m["errors_remove"]) == (2, 1)
    # images: error [T, T, F], max scores .9 .7 .95; flagged [T, T, F]
    assert m["image_errors"] == 2
    assert m["image_ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert (m["image_precision"], m["image_recall"], m["image_f1"]) == (1.0, 1.0, 1.0)


def test_detection_metrics_caller_image_scores_and_unjudged_cells():
    m = detection_metrics(GIVEN, TRUE, SCORE, SUGGESTED, image_score=np.array([0.9, 0.8, 0.1]),
                          image_flagged=np.array([True, False, True]))
    assert m["image_ap"] == pytest.approx(1.0)
    assert m["image_precision"] == pytest.approx(0.5) and m["image_recall"] == pytest.approx(0.5)
    # a cell whose true label is unknown is not judged: the .95 false alarm disappears
    true = TRUE.copy()
    true[2, 2] = -1
    m2 = detection_metrics(GIVEN, true, SCORE, SUGGESTED)
    assert m2["ap"] == pytest.approx((1 + 1 + 3 / 6) / 3)
    # NaN scores rank last; no suggestions -> precision NaN, recall 0
    s = SCORE.copy()
    s[0, 1] = np.nan
    m3 = detection_metrics(GIVEN, TRUE, s, GIVEN)
    assert np.isnan(m3["precision"]) and m3["recall"] == 0.0 and np.isnan(m3["f1"])
    assert m3["ap"] == pytest.approx((1 / 2 + 2 / 6 + 3 / 9) / 3)


def test_precision_at_recall_walks_the_ranking():
    # ranking .95N .9P .8P .7N .6N .5N .3P .2N .05N over 3 errors
    assert precision_at_recall(GIVEN, TRUE, SCORE, 1 / 3) == pytest.approx(1 / 2)
    assert precision_at_recall(GIVEN, TRUE, SCORE, 2 / 3) == pytest.approx(2 / 3)
    assert precision_at_recall(GIVEN, TRUE, SCORE, 0.7) == pytest.approx(3 / 7)
    assert precision_at_recall(GIVEN, TRUE, SCORE, 1.0) == pytest.approx(3 / 7)
    # against sklearn's curve: the precision at the first threshold reaching each recall
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    given = rng.integers(0, 2, (40, 5)).astype(np.int8)
    true = np.where(rng.random(given.shape) < 0.2, 1 - given, given).astype(np.int8)
    score = rng.random(given.shape)
    prec, rec, _ = precision_recall_curve((given != true).ravel(), score.ravel())
    for r in (0.25, 0.5, 0.9):
        want = prec[rec >= r][-1]   # sklearn's curve runs from low to high thresholds
        assert precision_at_recall(given, true, score, r) == pytest.approx(want)
    assert np.isnan(precision_at_recall(GIVEN, TRUE, SCORE, float("nan")))
    assert np.isnan(precision_at_recall(GIVEN, TRUE, SCORE, 0.0))


def test_average_precision_degenerate_and_matches_sklearn():
    from sklearn.metrics import average_precision_score

    assert np.isnan(average_precision([True, True], [0.1, 0.2]))
    assert np.isnan(average_precision([], []))
    rng = np.random.default_rng(0)
    y, s = rng.random(50) < 0.3, rng.random(50)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_cleanlab_issues_match_cleanlab():
    from cleanlab.multilabel_classification import filter as cl_filter
    from cleanlab.multilabel_classification import rank as cl_rank

    rng = np.random.default_rng(1)
    n, k = 60, 4
    true = (rng.random((n, k)) < 0.35).astype(np.int8)
    probs = np.clip(np.where(true == 1, 0.8, 0.15) + rng.normal(0, 0.1, (n, k)), 0.01, 0.99)
    given = true.copy()
    given[:6, 0] = 1 - given[:6, 0]
    given[10:20, 1] = -1
    res = cleanlab_issues(given, probs)
    binary = (given == 1).astype(float)   # unknown -> negative
    # self-confidence issue score: 1 - p on a given 1, p on a given 0 or unknown
    np.testing.assert_allclose(res.score, np.where(binary == 1, 1 - probs, probs), atol=1e-6)
    labels = [np.flatnonzero(r == 1).tolist() for r in given]
    flagged = cl_filter.find_multilabel_issues_per_class(labels, probs, n_jobs=1)
    want = np.where(flagged, np.where(given == -1, 1, 1 - given), np.where(given == -1, -1, given))
    np.testing.assert_array_equal(res.suggested, want)
    np.testing.assert_array_equal(res.image_flagged, cl_filter.find_label_issues(labels, probs, n_jobs=1))
    np.testing.assert_allclose(res.image_score, 1 - cl_rank.get_label_quality_scores(labels, probs))


def test_loss_ranking_hand_computed():
    given = np.array([[1, 0, -1, -1]], np.int8)
    logits = np.array([[-1.0, 2.0, 3.0, -3.0]], np.float32)
    res = loss_ranking(given, logits)
    sp = lambda z: np.log1p(np.exp(z))  # noqa: E731
    np.testing.assert_allclose(res.score, [[sp(1.0), sp(2.0), sp(3.0), sp(-3.0)]], rtol=1e-5)
    # given 1 with p < .5 -> 0; given 0 with p > .5 -> 1; unknown p > .5 -> 1, else none
    assert res.suggested.tolist() == [[0, 1, 1, -1]]


def test_results_keep_commit_ids_that_look_like_numbers(tmp_path):
    """A commit id such as 66e0517 is also the number 6.6e517 to a CSV reader: results.csv
    files are read with their commit columns as text (a run of commit 66e0517 once read back
    as "inf")."""
    path = tmp_path / "results.csv"
    pd.DataFrame({"metric": ["ap", "ap"], "value": [0.5, 0.6], "commit": ["66e0517", "1234567"],
                  "commits": ["66e0517", "66e0517, 1234567"]}).to_csv(path, index=False)
    back = read_results(path)
    assert back["commit"].tolist() == ["66e0517", "1234567"]
    assert back["commits"].tolist() == ["66e0517", "66e0517, 1234567"]
    assert back["value"].tolist() == [0.5, 0.6]


def test_parse_noise():
    assert parse_noise("mislabel:0.4") == ("mislabel", 0.4)
    assert parse_noise("single-positive") == ("single-positive", None)
    for bad in ("mislabel", "flip:2", "single-positive:0.1", "blur:0.1"):
        with pytest.raises(LabelfixError):
            parse_noise(bad)


def test_summary_tables_and_goals():
    rows = []
    for seed, (lf, cl, bm, b) in enumerate([(0.6, 0.5, 40.0, 42.0), (0.8, 0.5, 41.0, 40.0)]):
        for method, v in (("labelfix", lf), ("cleanlab", cl)):
            rows.append(dict(noise="mislabel:0.4", seed=seed, task="detection", method=method, metric="ap", value=v))
        for method, v in (("balancemix", bm), ("bce", b)):
            rows.append(dict(noise="mislabel:0.4", seed=seed, task="map", method=method, metric="map", value=v))
    for seed, (lm, b) in enumerate([(38.0, 36.0), (37.0, 36.0)]):
        for method, v in (("logicmix", lm), ("bce", b)):
            rows.append(dict(noise="missing:0.5", seed=seed, task="map", method=method, metric="map", value=v))
    frame = pd.DataFrame(rows)
    ms = mean_std(frame, "detection", ["ap"])
    assert ms.loc[("mislabel:0.4", "labelfix"), "ap_mean"] == pytest.approx(0.7)
    assert ms.loc[("mislabel:0.4", "labelfix"), "ap_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    g = {x["goal"]: x for x in goals(frame)}
    assert g["labelfix AP > cleanlab AP (mislabel:0.4)"]["met"]
    assert g["labelfix AP > cleanlab AP (mislabel:0.4)"]["gap"] == pytest.approx(0.2)
    assert not g["balancemix mAP > bce mAP (mislabel:0.4)"]["met"]   # 40.5 vs 41: not met
    assert g["logicmix mAP > bce mAP (missing:0.5)"]["gap"] == pytest.approx(1.5)
    assert "logicmix mAP > bce mAP (mislabel:0.4)" not in g   # no logicmix runs there


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("bench_demo"), n_train=120, n_test=60, size=32, seed=3)


def test_bench_end_to_end_cli(tiny_demo, tmp_path, monkeypatch):
    """The whole pipeline through the CLI on tiny data: noise, 2 methods, clean, cleanlab
    (2 folds), loss ranking, mAP, summary files; a second call reuses the finished runs."""
    from labelfix.bench import runner
    from labelfix.cli import main

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    monkeypatch.setitem(runner.METHOD_OPTIONS, "balancemix", {"balancemix_warmup": 1})
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "bench"
        args = ["bench", str(tiny_demo["train"]), "--test", str(tiny_demo["test"]), "--noise", "mislabel:0.4",
                "--methods", "bce,balancemix", "--seeds", "1", "--folds", "2", "--epochs", "2", "--out", str(out)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        frame = read_results(out / "results.csv")
        det = frame[(frame["task"] == "detection") & (frame["metric"] == "ap")].set_index("method")["value"]
        assert set(det.index) == {"labelfix", "cleanlab", "loss"}
        assert ((det > 0) & (det <= 1)).all()
        maps = frame[(frame["task"] == "map") & (frame["metric"] == "map")]
        assert set(maps["method"]) == {"bce", "balancemix"} and maps["value"].between(0, 100).all()
        assert frame[frame["task"] == "time"]["value"].gt(0).all()
        src = frame[frame["method"] == "labelfix"]["source"].unique().tolist()
        assert src == ["bce cv2x2"]   # masked BCE cross-fitted, 2 folds x 2 rounds
        assert frame[frame["method"] == "cleanlab"]["source"].unique().tolist() == ["bce cv2 (labelfix round 1)"]
        # labelfix's detection metrics are those of its clean run's cell arrays
        base = out / "runs" / "mislabel_0.4" / "seed0"
        noisy = np.load(base / "data" / "labels.npy")
        from labelfix.io import read_labels

        true = np.asarray(read_labels(tiny_demo["train"]).labels)
        want = detection_metrics(noisy, true, np.load(base / "labelfix" / "cells" / "score.npy"),
                                 np.load(base / "labelfix" / "cells" / "suggested.npy"))
        got = frame[(frame["method"] == "labelfix") & (frame["task"] == "detection")].set_index("metric")["value"]
        assert got["ap"] == pytest.approx(want["ap"]) and got["errors"] == want["errors"]
        assert want["errors"] == int((noisy != true).sum())   # mislabel: every changed cell is an error
        text = (out / "summary.md").read_text()
        assert "## mislabel:0.4" in text and "labelfix AP > cleanlab AP" in text
        assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
        recorded = (out / "command.txt").read_text()
        # the record is a command that runs: no option the setting refuses (it had the default
        # --single-positive-methods, refused without single-positive noise)
        assert "--noise mislabel:0.4" in recorded and "--single-positive-methods" not in recorded
        assert json.loads((out / "machine.json").read_text())["cpu_count"] >= 1
        # every row names the labelfix commit that trained its run (this checkout's)
        from labelfix.train.config import source_commit

        assert frame["commit"].astype(str).unique().tolist() == [source_commit() or "unknown"]
        # rerun: every run is reused, the numbers are identical, and a reused run keeps
        # the commit recorded when it was trained (here: as if by older code)
        cfg_path = base / "labelfix" / "config.yaml"
        doc = yaml.safe_load(cfg_path.read_text())
        doc["versions"]["labelfix_commit"] = "0ld0000"
        cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        res2 = CliRunner().invoke(main, args)
        assert res2.exit_code == 0, res2.output
        again = read_results(out / "results.csv")
        keep = again["task"] != "time"
        pd.testing.assert_frame_equal(again[keep].drop(columns="commit").reset_index(drop=True),
                                      frame[keep].drop(columns="commit").reset_index(drop=True))
        by_method = again.groupby("method")["commit"].agg(set)
        assert by_method["labelfix"] == {"0ld0000"} and by_method["cleanlab"] == {"0ld0000"}   # round 1 of it
        assert by_method["bce"] == by_method["loss"] == {source_commit() or "unknown"}
        # DATA edited since: its runs are not reused against other labels (they were, silently)
        coco = json.loads(Path(tiny_demo["train"]).read_text())
        coco["annotations"] = coco["annotations"][1:]
        edited = Path(tiny_demo["train"]).with_name("train_edited.json")
        edited.write_text(json.dumps(coco))
        res3 = CliRunner().invoke(main, [str(edited) if a == str(tiny_demo["train"]) else a for a in args])
        assert res3.exit_code == 2 and "holds the noisy labels of other data than" in res3.output, res3.output
    finally:
        torch.set_num_threads(old)


def test_bench_fold_workers_reach_the_cross_fitted_runs_only(tiny_demo, tmp_path, monkeypatch):
    """--fold-workers trains labelfix's fold models side by side; the full-data masked-BCE
    run of the loss ranking (no folds) is not refused for it."""
    from labelfix.bench import runner
    from labelfix.cli import main

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    out = tmp_path / "bench"
    args = ["bench", str(tiny_demo["train"]), "--test", str(tiny_demo["test"]), "--noise", "flip:0.2",
            "--methods", "bce", "--seeds", "1", "--folds", "2", "--rounds", "1", "--fold-workers", "2",
            "--epochs", "1", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    base = out / "runs" / "flip_0.2" / "seed0"
    assert "fold_workers: 2" in (base / "labelfix" / "config.yaml").read_text()
    assert "fold_workers: 1" in (base / "bce" / "config.yaml").read_text()
    assert "--fold-workers 2" in (out / "command.txt").read_text()
    det = read_results(out / "results.csv").query("task == 'detection' and metric == 'ap'")
    assert set(det["method"]) == {"labelfix", "cleanlab", "loss"}


def test_bench_refuses_fold_options_before_it_trains(tiny_demo, tmp_path):
    """An option the cross-fitted runs refuse (loader workers inside fold processes) stops
    the bench before any training or folder (before: after the single-method runs)."""
    from labelfix.bench.runner import run_bench
    from labelfix.errors import LabelfixError

    with pytest.raises(LabelfixError, match="--workers: not with --fold-workers above 1"):
        run_bench(tiny_demo["train"], tiny_demo["test"], out=tmp_path / "bench", folds=2, fold_workers=2,
                  workers=2)
    assert not (tmp_path / "bench").exists()


def test_bench_single_positive_trains_the_product_default(tiny_demo, tmp_path, monkeypatch):
    """On single-positive noise labelfix's run is `--loss auto` (AN-LS, then ROLE with kappa
    from round 1, named as resolved in the source column) and cleanlab ranks its own
    cross-fitted `an` models; the AP is over the unknown cells."""
    from labelfix.bench import runner
    from labelfix.cli import main

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    out = tmp_path / "bench"
    args = ["bench", str(tiny_demo["train"]), "--test", str(tiny_demo["test"]), "--noise", "single-positive",
            "--methods", "bce", "--single-positive-methods", "", "--seeds", "1", "--folds", "2", "--epochs", "1",
            "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    frame = read_results(out / "results.csv")
    det = frame[frame["task"] == "detection"]
    assert det[det["method"] == "labelfix"]["source"].unique().tolist() == ["an-ls+role cv2x2"]
    assert det[det["method"] == "cleanlab"]["source"].unique().tolist() == ["an cv2"]
    assert det[det["metric"] == "ap_unknown"]["value"].between(0, 1).all()
    round2 = yaml.safe_load((out / "runs" / "single-positive" / "seed0" / "labelfix" / "folds" / "round2" / "fold0"
                             / "config.yaml").read_text())["train"]
    assert round2["loss"] == "role" and round2["loss_kwargs"]["kappa"] >= 1


def test_bench_fine_tuned_trains_logicmix_and_gives_cleanlab_unmixed_folds(tiny_demo, tmp_path, monkeypatch):
    """From pretrained weights labelfix's run is the product default `--mix auto` (LogicMix,
    named in the source column), and cleanlab ranks its own masked-BCE fold models without
    mixing on the same folds, not labelfix's mixed round 1; a rerun reuses both runs."""
    from labelfix.bench import runner
    from labelfix.io import read_labels
    from labelfix.models import create_model

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    classes = read_labels(tiny_demo["train"]).num_classes
    model = create_model("test_resnet", num_classes=classes, img_size=runner.BENCH_TRAIN["img_size"])
    torch.save(model.state_dict(), tmp_path / "pretrained.pt")   # a full model: every backbone tensor loads
    kw = dict(data=tiny_demo["train"], test=tiny_demo["test"], noises=["mislabel:0.4"], methods=["bce"], seeds=1,
              folds=2, rounds=1, out=tmp_path / "bench", log=lambda s: None,
              epochs=1, weights=str(tmp_path / "pretrained.pt"))
    frame = runner.run_bench(**kw).results
    det = frame[frame["task"] == "detection"]
    assert det[det["method"] == "labelfix"]["source"].unique().tolist() == ["bce+logicmix cv2x1"]
    assert det[det["method"] == "cleanlab"]["source"].unique().tolist() == ["bce cv2"]
    base = tmp_path / "bench" / "runs" / "mislabel_0.4" / "seed0"
    trained = {name: yaml.safe_load((base / name / "config.yaml").read_text())["train"]
               for name in ("labelfix", "cleanlab_cv")}
    assert trained["labelfix"]["mix"] == "logicmix" and trained["cleanlab_cv"]["mix"] == "none"
    assert trained["cleanlab_cv"]["loss"] == "bce"
    assert np.array_equal(np.load(base / "labelfix" / "folds.npy"), np.load(base / "cleanlab_cv" / "folds.npy"))
    again = runner.run_bench(**kw).results   # the finished runs are reused, "auto" as they resolved it
    keep = frame["task"] != "time"
    pd.testing.assert_frame_equal(again[again["task"] != "time"].reset_index(drop=True),
                                  frame[keep].reset_index(drop=True))
    # a run whose "auto" resolved otherwise (an older rule: no mixing) is not taken for this one
    cfg_path = base / "labelfix" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("mix: logicmix", "mix: none"))
    with pytest.raises(LabelfixError, match=r"labelfix: was trained with other options \(mix\)"):
        runner.run_bench(**kw)


def test_bench_reference_trains_once_on_the_true_labels_and_ranks_like_cleanlab(tiny_demo, tmp_path, monkeypatch):
    """The reference baseline: one cross-fitted masked-BCE run per seed on the clean
    labels, shared by every noise setting, its held-out probabilities scored with
    cleanlab's self-confidence against each setting's noisy labels."""
    from labelfix.bench import runner
    from labelfix.data.noise import inject_noise
    from labelfix.io import read_labels
    from labelfix.labels import LabelSet
    from labelfix.numeric import sigmoid

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    out = tmp_path / "bench"
    frame = runner.run_bench(tiny_demo["train"], tiny_demo["test"], noises=["flip:0.2", "mislabel:0.4"],
                             methods=["bce"], seeds=1, folds=2, rounds=1, out=out, log=lambda s: None,
                             baselines=("reference",), epochs=1).results
    ref_runs = sorted(p.name for p in (out / "runs" / "reference").iterdir())
    assert ref_runs == ["data", "seed0"]   # one run for both noise settings
    true = np.asarray(read_labels(tiny_demo["train"]).labels)
    assert np.array_equal(np.asarray(LabelSet.load(out / "runs" / "reference" / "data").labels), true)
    trained = yaml.safe_load((out / "runs" / "reference" / "seed0" / "config.yaml").read_text())["train"]
    assert (trained["loss"], trained["mix"], trained["folds"], trained["rounds"]) == ("bce", "none", 2, 1)
    probs = sigmoid(np.load(out / "runs" / "reference" / "seed0" / "stats" / "logits.npy").astype(np.float32))
    ref = frame[(frame["task"] == "detection") & (frame["method"] == "reference")]
    assert ref["source"].unique().tolist() == ["bce cv2 on the true labels"]
    for noise, kind, rate in (("flip:0.2", "flip", 0.2), ("mislabel:0.4", "mislabel", 0.4)):
        noisy = inject_noise(true, kind, rate, 0).labels
        iss = cleanlab_issues(noisy, probs)
        want = detection_metrics(noisy, true, iss.score, iss.suggested)
        got = ref[ref["noise"] == noise].set_index("metric")["value"]
        assert got["ap"] == pytest.approx(want["ap"])
    with pytest.raises(LabelfixError, match="baselines: unknown oracle"):
        runner.run_bench(tiny_demo["train"], tiny_demo["test"], out=tmp_path / "x", baselines=("oracle",))


def test_bench_without_bce_says_the_loss_ranking_is_not_computed(tiny_demo, tmp_path, monkeypatch):
    from labelfix.bench import runner

    monkeypatch.setitem(runner.BENCH_TRAIN, "batch_size", 32)
    lines = []
    frame = run_bench(tiny_demo["train"], tiny_demo["test"], noises=["flip:0.2"], methods=["mixup"], seeds=1,
                      folds=2, rounds=1, epochs=1, out=tmp_path / "b", log=lines.append).results
    assert "loss" not in set(frame["method"])   # it ranks the bce run's loss: said, not silently missing
    assert any("loss ranking: not computed" in line and "add bce to --methods" in line for line in lines), lines


def test_bench_refuses_folds_a_setting_cannot_hold_before_anything_trains(tiny_demo, tmp_path):
    # it failed after the settings before it had trained, and advised training without --folds
    with pytest.raises(LabelfixError, match=r"^bench: --noise flip:0.2, seed 0: --folds 60: larger than the smallest "
                                            r"class: .*; use --folds \d+ or fewer, or drop the class$"):
        run_bench(tiny_demo["train"], tiny_demo["test"], out=tmp_path / "b", noises=["flip:0.2"], seeds=1, folds=60)
    assert not (tmp_path / "b" / "runs").exists()


def test_bench_refuses_a_noise_setting_given_twice(tiny_demo, tmp_path):
    # flip:0.1 and flip:0.10 are one setting: its rows would be counted twice in the tables
    with pytest.raises(LabelfixError, match=r"--noise: flip:0.1 given twice"):
        run_bench(tiny_demo["train"], tiny_demo["test"], out=tmp_path / "b", noises=["flip:0.1", "flip:0.10"])
    assert not (tmp_path / "b").exists()


def test_bench_needs_test_with_data(tiny_demo, tmp_path):
    from labelfix.cli import main

    res = CliRunner().invoke(main, ["bench", str(tiny_demo["train"]), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--test" in res.output
    res = CliRunner().invoke(main, ["bench", str(tiny_demo["train"]), "--test", str(tiny_demo["test"]),
                                    "--methods", "bce,nope", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "nope" in res.output
