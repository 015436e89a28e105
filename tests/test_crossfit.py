"""Out-of-sample evidence: cross-fitting (--folds, --rounds), frozen features (--frozen),
neighbour votes, and verified cells carried from a review into the next round."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from labelfix.errors import LabelfixError
from labelfix.labels import LabelSet
from labelfix.train import TrainConfig, train
from labelfix.train.crossfit import assign_folds, fold_dir, suspicious_cells

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("cf"), n_train=60, n_test=8, size=32, seed=5)   # >= 3 positives a class


def cfg_for(tiny, out, **kw) -> TrainConfig:
    base = dict(data=str(tiny["train"]), out=str(out), backbone="test_resnet", img_size=32, epochs=2,
                batch_size=8, workers=0, progress=False, lr=1e-3, mix="none", randaugment=False, hflip=0.0,
                folds=3)
    base.update(kw)
    return TrainConfig(**base)


def test_assign_folds_spreads_every_class_and_refuses_thin_classes():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 4)) < 0.3).astype(np.int8)
    labels[:3, 3], labels[3:, 3] = 1, 0           # class 3: exactly 3 positives
    folds = assign_folds(labels, np.arange(60), 3, seed=1)
    assert sorted(np.bincount(folds)) == [20, 20, 20]
    for k in range(4):   # every class has positives in every fold
        assert all(((folds == f) & (labels[:, k] == 1)).any() for f in range(3))
    np.testing.assert_array_equal(folds, assign_folds(labels, np.arange(60), 3, seed=1))
    with pytest.raises(LabelfixError, match="--folds 4: larger than the smallest class: class 'd' has 3 training "
                                            r"positive\(s\); use --folds 3 or fewer, or drop the class"):
        assign_folds(labels, np.arange(60), 4, seed=1, class_names=["a", "b", "c", "d"])
    labels[1:, 3] = 0   # one positive: no fold count helps (before: "use --folds 2 or fewer" to --folds 2)
    with pytest.raises(LabelfixError, match=r"--folds 2: .* class 'd' has 1 training positive\(s\); cross-fitting "
                                            r"needs 2 per class: drop the class, or train without --folds"):
        assign_folds(labels, np.arange(60), 2, seed=1, class_names=["a", "b", "c", "d"])
    with pytest.raises(LabelfixError, match=r"needs 2 per class: drop the class$"):   # a caller that must cross-fit
        assign_folds(labels, np.arange(60), 2, seed=1, class_names=["a", "b", "c", "d"], folds_optional=False)


def test_suspicious_cells_follow_the_held_out_gmms_and_spare_trusted_cells():
    rng = np.random.default_rng(1)
    given = (rng.random((400, 2)) < 0.5).astype(np.int8)
    logits = np.where(given == 1, 4.0, -4.0).astype(np.float32) + rng.normal(0, 0.3, given.shape).astype(np.float32)
    wrong = np.zeros(given.shape, bool)
    wrong[:40, 0] = True
    logits[wrong] = -logits[wrong]                  # the model disagrees with these labels
    mask = suspicious_cells(logits, given, np.arange(400))
    assert mask[wrong].all() and not mask[~wrong].any()   # class 1 has no error: the GMM split alone is not enough
    trusted = np.zeros(given.shape, bool)
    trusted[:10, 0] = True
    assert not suspicious_cells(logits, given, np.arange(400), trusted)[:10, 0].any()


def test_count_dispersion_tells_count_keeping_noise_from_independent_labels():
    from labelfix.cleaning.noise_rates import COUNT_KEEPING_MAX, count_dispersion

    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(6), size=4000)            # each row sums to 1: one positive expected per image
    independent = (rng.random(q.shape) < q).astype(np.int8)
    assert abs(count_dispersion(independent, q, chunk_rows=1000) - 1.0) < 0.1
    # one positive per image, its class drawn from q: the count never scatters (R = 0)
    one_hot = np.zeros(q.shape, np.int8)
    one_hot[np.arange(len(q)), [rng.choice(6, p=row) for row in q]] = 1
    assert count_dispersion(one_hot, q) < 1e-12 < COUNT_KEEPING_MAX
    # hand computation; unknown and NaN cells are not counted, an image without a known cell is left out
    given = np.array([[1, 0, -1], [0, 0, 1], [-1, -1, -1]], np.int8)
    q2 = np.array([[0.5, 0.5, 0.9], [0.2, np.nan, 0.6], [0.3, 0.3, 0.3]])
    sq = (1 - 1.0) ** 2 + (1 - 0.8) ** 2
    var = 0.25 + 0.25 + 0.16 + 0.24
    assert count_dispersion(given, q2, chunk_rows=2) == pytest.approx(sq / var)
    assert np.isnan(count_dispersion(np.full((2, 2), -1, np.int8), np.full((2, 2), 0.5)))


def test_suspicious_rule_follows_the_kind_of_noise_and_the_loss_rule_keeps_the_count():
    from labelfix.train.crossfit import suspicious_rule

    rng = np.random.default_rng(4)
    n, k = 600, 5
    true = np.zeros((n, k), np.int8)
    true[np.arange(n), rng.integers(0, k, n)] = 1        # one object per image
    logits = np.where(true == 1, 3.0, -3.0).astype(np.float32) + rng.normal(0, 0.5, true.shape).astype(np.float32)
    moved = true.copy()                                 # mislabel: the positive of 20 % of the images moves
    for i in rng.choice(n, n // 5, replace=False):
        j = int(np.flatnonzero(moved[i])[0])
        moved[i, j], moved[i, (j + 1) % k] = 0, 1
    flipped = np.where(rng.random(true.shape) < 0.1, 1 - true, true).astype(np.int8)   # independent flips
    rows = np.arange(n)
    assert suspicious_rule(logits, moved, rows)[0] == "class"
    assert suspicious_rule(logits, flipped, rows)[0] == "loss"
    by_class = suspicious_cells(logits, flipped, rows)
    by_loss = suspicious_cells(logits, flipped, rows, rule="loss")
    assert by_loss.sum() == by_class.sum() > 0           # the GMMs say how many, the loss which
    from labelfix.numeric import bce_logits

    loss = bce_logits(logits, flipped)
    assert loss[by_loss].min() >= loss[~by_loss].max()  # the largest held-out losses over all classes
    trusted = by_loss.copy()
    assert not (suspicious_cells(logits, flipped, rows, trusted, rule="loss") & trusted).any()
    with pytest.raises(ValueError, match="rule 'gmm'"):
        suspicious_cells(logits, flipped, rows, rule="gmm")


def test_cross_fitted_run_writes_held_out_statistics_and_an_ensemble(tiny, tmp_path):
    from labelfix.models import load_checkpoint, model_from_checkpoint

    out = tmp_path / "run"
    train(cfg_for(tiny, out), log=lambda s: None)
    folds = np.load(out / "folds.npy")
    state = json.loads((out / "stats" / "state.json").read_text())
    assert state["out_of_sample"] and state["rounds"] in (1, 2) and state["complete"]
    r = state["rounds"]
    logits = np.load(out / "stats" / "logits.npy")
    for f in range(3):   # each row comes from the fold model that held it out
        fold_logits = np.load(fold_dir(out, f, r) / "stats" / "logits.npy")
        np.testing.assert_array_equal(logits[folds == f], fold_logits[folds == f])
        split = np.load(fold_dir(out, f, r) / "split.npy")
        assert (split[folds == f] == 2).all() and (split[folds != f] == 0).all()
    if r == 2:   # round 2 trained the suspicious cells of round 1 as unknown
        mask = np.load(out / "stats" / "round1" / "suspicious.npy")
        assert (np.load(fold_dir(out, 0, 2) / "labels.npy")[mask] == -1).all()
    for f in range(3):   # only the last round's models embed the images (clean's neighbour evidence)
        assert (fold_dir(out, f, r) / "stats" / "embeddings.npy").exists()
        assert r == 1 or not (fold_dir(out, f, 1) / "stats" / "embeddings.npy").exists()
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    assert ckpt["model_config"]["ensemble"] == 3
    model = model_from_checkpoint(ckpt)
    x = torch.zeros(2, 3, 32, 32)
    members = [model_from_checkpoint(load_checkpoint(fold_dir(out, f, r) / "checkpoints" / "best.pt"))
               for f in range(3)]
    expect = torch.stack([m(x) for m in members]).mean(0)
    torch.testing.assert_close(model(x), expect)
    from labelfix.cleaning.clean_run import clean_run

    # cleaning one fold model's own folder says what it is and where the held-out statistics are
    notes = clean_run(fold_dir(out, 0, r), report=False).notes
    assert any(f"one fold model of the cross-fitted run {out}" in n for n in notes), notes
    assert not any(n.startswith("in-sample statistics") for n in notes)


def test_a_fold_killed_while_embedding_embeds_again_on_resume(tiny, tmp_path):
    """A fold model of the last round killed during its final embedding pass (training
    complete, the embedding's record not) embeds the images again on --resume, without
    training: clean reads that embedding."""
    out = tmp_path / "run"
    train(cfg_for(tiny, out, rounds=1), log=lambda s: None)
    record = fold_dir(out, 2, 1) / "stats" / "embeddings.json"
    record.write_text(json.dumps(dict(json.loads(record.read_text()), complete=False)))
    before = (fold_dir(out, 2, 1) / "checkpoints" / "last.pt").stat().st_mtime_ns
    lines = []
    train(cfg_for(tiny, out, rounds=1, resume=True), log=lines.append)
    assert json.loads(record.read_text())["complete"]
    assert any("fold 3/3: complete; its embedding" in line for line in lines)
    assert (fold_dir(out, 2, 1) / "checkpoints" / "last.pt").stat().st_mtime_ns == before   # no training


@pytest.mark.parametrize("fold_workers", [1, 2])
def test_rounds_stopped_early_embed_with_the_last_round_trained(tiny, tmp_path, monkeypatch, fold_workers):
    """Round 1's fold models do not embed the images when a round 2 follows; when no
    cell is suspicious, round 2 does not train and round 1's finished models embed them
    after all (here or in the fold pool), without training, so clean has its neighbour
    evidence."""
    from labelfix.cleaning.evidence import neighbour_votes
    from labelfix.run import load_run
    from labelfix.train import crossfit

    monkeypatch.setattr(crossfit, "suspicious_cells", lambda logits, given, *a, **kw: np.zeros(given.shape, bool))
    out = tmp_path / "run"
    lines = []
    train(cfg_for(tiny, out, rounds=2, fold_workers=fold_workers), log=lines.append)
    assert json.loads((out / "stats" / "state.json").read_text())["rounds"] == 1
    assert any("no suspicious cell" in line for line in lines)
    assert not any("epochs trained" in line for line in lines)   # the finished models do not train again
    assert not (out / "folds" / "round2").exists()
    for f in range(3):
        assert (fold_dir(out, f, 1) / "stats" / "embeddings.npy").exists()
    votes, _pairs = neighbour_votes(load_run(out))
    assert votes is not None and np.isfinite(votes).any()
    # an embedding pass killed half-way (its record says not complete) is redone on --resume
    record = fold_dir(out, 1, 1) / "stats" / "embeddings.json"
    record.write_text(json.dumps(dict(json.loads(record.read_text()), complete=False)))
    train(cfg_for(tiny, out, rounds=2, fold_workers=fold_workers, resume=True), log=lambda s: None)
    assert json.loads(record.read_text())["complete"]


@pytest.mark.parametrize("mix", ["none", "balancemix"])
def test_fold_models_score_their_held_out_rows_every_epoch_and_every_row_at_the_end(tiny, tmp_path, mix):
    """Before its last epoch a fold model's evaluation pass scores only the rows whose
    statistics are used (held out); a mixer that reads the training rows' logits
    (BalanceMix) gets every row every epoch."""
    seen = []

    class Rows:
        def on_epoch_end(self, trainer, epoch, row):
            scored = np.isfinite(np.load(trainer.out / "stats" / "logits.npy").astype(np.float32)).all(1)
            seen.append((epoch, scored, np.load(trainer.out / "split.npy")))

    extra = {"balancemix_warmup": 1} if mix == "balancemix" else {}
    train(cfg_for(tiny, tmp_path / "run", epochs=3, rounds=1, mix=mix, **extra), callbacks=[Rows()],
          log=lambda s: None)
    assert len(seen) == 9
    for epoch, scored, split in seen:
        if epoch == 2 or mix == "balancemix":
            assert scored.all()
        else:
            np.testing.assert_array_equal(scored, split == 2)


def test_cross_fitted_run_resumes_after_a_kill(tiny, tmp_path):
    class Stop(Exception):
        pass

    class StopAt:   # dies in the middle of fold 2 of round 1
        def __init__(self):
            self.calls = 0

        def on_step(self, trainer, epoch, step):
            if trainer.out.name == "fold1" and epoch == 1 and step == 1:
                raise Stop

    ref, run = tmp_path / "ref", tmp_path / "run"
    train(cfg_for(tiny, ref, rounds=1), log=lambda s: None)
    with pytest.raises(Stop):
        train(cfg_for(tiny, run, rounds=1), callbacks=[StopAt()], log=lambda s: None)
    assert not (run / "checkpoints" / "last.pt").exists()
    train(cfg_for(tiny, run, rounds=1, resume=True), log=lambda s: None)
    np.testing.assert_array_equal(np.load(ref / "stats" / "logits.npy"), np.load(run / "stats" / "logits.npy"))


def positive_only_csv(tiny, tmp_path):
    """The tiny training set as a CSV of its positives only (every negative unknown):
    (path, the LabelSet read from the COCO file)."""
    from labelfix.io import read_labels

    given = read_labels(tiny["train"])
    table = given.images[["file_name"]].copy()
    for k, name in enumerate(given.class_names):
        table[name] = np.where(np.asarray(given.labels)[:, k] == 1, "1", "")
    sp = tmp_path / "positives.csv"
    table.to_csv(sp, index=False)
    return sp, given


def test_positive_only_labels_train_an_ls_in_every_fold_and_clean_without_votes(tiny, tmp_path):
    """Positive-only labels: --loss auto is AN-LS for the run and each fold model (the
    top-level config.yaml and the folds' record it), a resume keeps it, and clean does not
    count the neighbours' votes."""
    import yaml

    sp, given = positive_only_csv(tiny, tmp_path)
    images = str(given.image_root)
    run, lines = tmp_path / "run", []
    train(cfg_for(tiny, run, data=str(sp), images=images, rounds=1, epochs=1), log=lines.append)
    assert sum("--loss auto" in line for line in lines) == 1
    for config in [run / "config.yaml"] + [fold_dir(run, f) / "config.yaml" for f in range(3)]:
        assert yaml.safe_load(config.read_text())["train"]["loss"] == "an-ls"
    train(cfg_for(tiny, run, data=str(sp), images=images, rounds=1, epochs=2, resume=True), log=lambda s: None)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["loss"] == "an-ls"
    assert yaml.safe_load((fold_dir(run, 0) / "config.yaml").read_text())["train"]["epochs"] == 2
    # clean: the neighbours' known labels are positive by selection, so they do not vote
    from labelfix.cleaning.clean_run import clean_run

    voted = clean_run(run, report=False)
    assert any("neighbour votes not used: the labels are positive-only" in n for n in voted.notes)
    assert not (run / "cells" / "neighbours.npy").exists() and (run / "cells" / "duplicates.csv").exists()
    plain = clean_run(run, report=False, neighbours=0)
    np.testing.assert_array_equal(np.asarray(voted.issues.score), np.asarray(plain.issues.score))


def test_positive_only_labels_refit_role_in_round_2_with_kappa_from_round_1(tiny, tmp_path):
    """--loss auto on positive-only labels with 2 rounds: round 1 trains AN-LS with the
    run's mixing, round 2 ROLE without mixing, its kappa estimated from round 1's held-out
    logits and recorded in every round-2 fold's config.yaml, the one known negative
    trained as such; a resume keeps both losses; clean judges every cell by the mean of
    both rounds, and the run's model is both rounds' fold models."""
    import yaml

    from labelfix.cleaning.clean_run import clean_run
    from labelfix.losses import kappa_from_held_out

    sp, given = positive_only_csv(tiny, tmp_path)
    table = pd.read_csv(sp, dtype=str, keep_default_na=False)
    column = given.class_names[int(np.flatnonzero(np.asarray(given.labels)[0] != 1)[0])]
    table.loc[0, column] = "0"   # one known negative, as a reviewer's rejected suggestion
    table.to_csv(sp, index=False)
    run, lines = tmp_path / "run", []
    options = dict(data=str(sp), images=str(given.image_root), folds=2, epochs=1, mix="mixup", prior_bias=True)
    train(cfg_for(tiny, run, **options), log=lines.append)
    top = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (top["loss"], top["refit_loss"]) == ("an-ls", "role")
    labels = np.asarray(LabelSet.load(run).labels)
    kappa = round(kappa_from_held_out(np.load(run / "stats" / "round1" / "logits.npy"), labels,
                                      np.flatnonzero(np.load(run / "folds.npy") >= 0), 0.1), 4)
    assert any(f"--loss role with kappa {kappa:g}" in line
               and "its label table starts from round 1's held-out estimates" in line for line in lines)
    for f in range(2):
        first = yaml.safe_load((fold_dir(run, f, 1) / "config.yaml").read_text())["train"]
        second = yaml.safe_load((fold_dir(run, f, 2) / "config.yaml").read_text())["train"]
        assert (first["loss"], first["mix"], first["prior_bias"]) == ("an-ls", "mixup", True)
        assert (second["loss"], second["loss_kwargs"], second["mix"], second["prior_bias"]) == \
            ("role", {"kappa": kappa, "observed_negatives": True}, "none", None)   # the known negative trains
    np.testing.assert_array_equal(np.load(run / "stats" / "logits.npy"),
                                  np.load(run / "stats" / "round2" / "logits.npy"))
    # the run's model is every round's fold models: the mean of the logits clean judges by
    from labelfix.models import load_checkpoint, model_from_checkpoint

    ensemble = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ensemble["model_config"]["ensemble"] == 4
    x = torch.rand(3, 3, 32, 32)
    members = [model_from_checkpoint(load_checkpoint(fold_dir(run, f, r) / "checkpoints" / "last.pt"))
               for r in (1, 2) for f in range(2)]
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(ensemble)(x),
                                   torch.stack([m(x) for m in members]).mean(0), rtol=1e-4, atol=1e-5)
    # a run stopped in round 2 resumes with the same kappa (recomputed from round 1's file)
    import shutil

    shutil.rmtree(fold_dir(run, 1, 2))
    (run / "stats" / "state.json").unlink()
    train(cfg_for(tiny, run, **options, resume=True), log=lambda s: None)
    redone = yaml.safe_load((fold_dir(run, 1, 2) / "config.yaml").read_text())["train"]
    assert (redone["loss"], redone["loss_kwargs"]) == ("role", {"kappa": kappa, "observed_negatives": True})
    # more epochs: round 1 trains on and rewrites its logits; round 2 keeps the kappa it
    # started with (before: a recomputed kappa made every round-2 fold refuse the resume)
    before = np.load(run / "stats" / "round1" / "logits.npy")
    train(cfg_for(tiny, run, **{**options, "epochs": 2}, resume=True), log=lambda s: None)
    assert not np.array_equal(np.load(run / "stats" / "round1" / "logits.npy"), before)
    for f in range(2):
        again = yaml.safe_load((fold_dir(run, f, 2) / "config.yaml").read_text())["train"]
        assert (again["epochs"], again["loss_kwargs"]) == (2, {"kappa": kappa, "observed_negatives": True})
        assert again["resume"] is False   # a run's options, not how it was started (--config reuses them)
    res = clean_run(run, report=False)
    assert any("cells judged by the mean of the 2 rounds' held-out logits (round 1 an-ls, then role" in n
               for n in res.notes)
    # an explicit loss trains the same loss in every round: round 2 has nothing to refit
    plain = tmp_path / "plain"
    train(cfg_for(tiny, plain, data=str(sp), images=str(given.image_root), folds=2, epochs=1, loss="an-ls"),
          log=lambda s: None)
    assert yaml.safe_load((plain / "config.yaml").read_text())["train"]["refit_loss"] is None
    assert not (plain / "folds" / "round2").exists()


def test_a_role_refit_round_starts_its_label_table_from_round_1(tiny, tmp_path):
    """Round 2's ROLE fold models start their label table from round 1's held-out estimates
    (crossfit.refit_estimates: AN-LS unsmoothed, divided by the given rate), not from the
    paper's uniform start: after their first optimizer step (the table's learning rate is
    10x the model's 1e-3) every training cell is still within 0.05 of its warm start."""
    from labelfix.losses import estimates_from_held_out
    from labelfix.losses.spl import init_role_table

    sp, given = positive_only_csv(tiny, tmp_path)
    first_steps = {}

    class FirstStep:
        def on_step(self, trainer, epoch, step):
            if trainer.cfg.loss == "role" and trainer.cfg.out not in first_steps:
                first_steps[trainer.cfg.out] = (trainer.loss_fn.table.detach().clone(), trainer.train_rows)

    run = tmp_path / "run"
    train(cfg_for(tiny, run, data=str(sp), images=str(given.image_root), folds=2, epochs=1), callbacks=[FirstStep()],
          log=lambda s: None)
    labels = np.asarray(LabelSet.load(run).labels)
    train_rows = np.flatnonzero(np.load(run / "folds.npy") >= 0)
    start = estimates_from_held_out(np.load(run / "stats" / "round1" / "logits.npy"), labels, train_rows, 0.1)
    warm = init_role_table(labels, estimates=start.astype(np.float16))
    assert sorted(first_steps) == [str(fold_dir(run, f, 2)) for f in range(2)]
    for table, rows in first_steps.values():
        moved = (table[rows] - warm[rows]).abs()
        assert float(moved.max()) < 0.05
        cold = init_role_table(labels)   # the paper's start differs by far more
        assert float((cold[rows] - warm[rows]).abs().max()) > 0.5
    # the start is kept: a round-2 fold model that starts after a resume retrained round 1 (more
    # epochs, new logits) begins where its siblings began (it took the new logits' start)
    kept = np.load(run / "stats" / "round1" / "role_start.npy")
    np.testing.assert_array_equal(kept, start.astype(np.float16))
    import shutil

    shutil.rmtree(fold_dir(run, 1, 2))   # as if killed before it started
    first_steps.clear()
    before = np.load(run / "stats" / "round1" / "logits.npy")
    train(cfg_for(tiny, run, data=str(sp), images=str(given.image_root), folds=2, epochs=2, resume=True),
          callbacks=[FirstStep()], log=lambda s: None)
    new = estimates_from_held_out(np.load(run / "stats" / "round1" / "logits.npy"), labels, train_rows, 0.1)
    assert float(np.abs(new - start).max()) > 0.05   # round 1 trained on: its estimates moved
    table, rows = first_steps[str(fold_dir(run, 1, 2))]
    assert float((table[rows] - warm[rows]).abs().max()) < 0.05
    np.testing.assert_array_equal(np.load(run / "stats" / "round1" / "role_start.npy"), kept)


def test_refit_loss_is_checked(tiny, tmp_path):
    with pytest.raises(LabelfixError, match="--refit-loss: 'an' is not one of epr, role"):
        cfg_for(tiny, tmp_path / "x", refit_loss="an").validate()
    with pytest.raises(LabelfixError, match="--refit-loss: trains cross-fitting's rounds 2 and later"):
        cfg_for(tiny, tmp_path / "x", refit_loss="role", rounds=1).validate()


def test_frozen_run_end_to_end(tiny, tmp_path):
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.export.onnx import export_run
    from labelfix.export.predict import predict

    out, lines = tmp_path / "frozen", []
    train(cfg_for(tiny, out, frozen=True, folds=2, rounds=1, epochs=3, lr=1e-2), log=lines.append)
    # a random backbone is allowed (this test), and said once: the features carry no evidence
    assert sum("--frozen with a randomly initialised backbone" in line for line in lines) == 1
    feats = np.load(out / "features" / "train.npy")
    assert feats.dtype == np.float16 and feats.shape[0] == 60 and np.isfinite(feats).all()
    info = json.loads((out / "features" / "train.json").read_text())
    assert info["complete"] and info["rows_done"] == 60
    res = clean_run(out, report=False)
    assert (out / "cells" / "neighbours.npy").exists() and len(res.issues.score) == 60
    # a score rule that does not read the votes: none are kept, the duplicate groups are
    clean_run(out, report=False, scorer="loss")
    assert not (out / "cells" / "neighbours.npy").exists() and (out / "cells" / "duplicates.csv").exists()
    model = export_run(out, tmp_path / "m.onnx")   # the whole model: frozen backbone + trained heads
    preds = predict(model, [tiny["images"] / "train_00000.png"], progress=False)
    assert len(preds) == 1


def test_a_cross_fitted_run_lists_the_images_its_fold_models_could_not_read(tiny, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny["images"], data / "images")
    coco = json.loads(Path(tiny["train"]).read_text())
    (data / "train.json").write_text(json.dumps(coco))
    gone = coco["images"][7]["file_name"]
    (data / gone).unlink()
    lines = []
    res = train(cfg_for(tiny, tmp_path / "run", data=str(data / "train.json"), folds=2, rounds=2, epochs=1),
                log=lines.append)
    # the run lists it where a run without folds does (each fold model's list is in its own folder),
    # and says so once (each of its 4 fold models said it before)
    assert res["skipped"] == 1
    listed = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    assert listed[["index", "file_name", "reason"]].values.tolist() == [[7, gone, "missing"]]
    said = [line for line in lines if "could not be read" in line]
    # the first fold model says it after its first epoch; the run sums up at the end
    assert said == ["cross-fitting round 1/2, fold 1/2: epoch 1: 1 image(s) could not be read and were skipped "
                    "(1 missing); training goes on without them",
                    f"1 image(s) could not be read and were skipped (1 missing); see {tmp_path / 'run'}"
                    f"/skipped_images.csv"], said


def test_a_cross_fitted_run_says_which_weights_it_loaded_once(tiny, tmp_path):
    import timm

    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    lines = []
    train(cfg_for(tiny, tmp_path / "run", folds=2, rounds=2, epochs=1, weights=str(weights), pretrained=False),
          log=lines.append)
    # every fold model loads them (4 here); the line is the first one's (it said it 4 times)
    said = [line for line in lines if "weights: " in line]
    assert len(said) == 1 and "backbone tensors" in said[0] and str(weights) in said[0], said


def test_frozen_refuses_augmentation_and_feature_heads(tiny, tmp_path):
    with pytest.raises(LabelfixError, match="--randaugment: --frozen trains on fixed features"):
        cfg_for(tiny, tmp_path / "x", frozen=True, randaugment=True).validate()
    with pytest.raises(LabelfixError, match="--head: 'q2l': --frozen trains a head on pooled features"):
        cfg_for(tiny, tmp_path / "x", frozen=True, head="q2l").validate()
    with pytest.raises(LabelfixError, match="--rounds: needs --folds"):
        cfg_for(tiny, tmp_path / "x", folds=0, rounds=2).validate()


def test_features_of_the_wrong_shape_are_refused(tiny, tmp_path):
    from labelfix.io import read_labels
    from labelfix.train.features import FeatureDataset

    ls = read_labels(tiny["train"])
    with pytest.raises(LabelfixError, match="features: 5 rows for 60 images"):
        FeatureDataset(ls, np.zeros((5, 8), np.float16))


def test_neighbour_votes_count_known_labels_only():
    from sklearn.neighbors import NearestNeighbors

    from labelfix.cleaning.neighbours import neighbour_estimates

    rng = np.random.default_rng(2)
    feats = rng.normal(size=(40, 6)).astype(np.float32)
    given = rng.integers(-1, 2, size=(40, 3)).astype(np.int8)
    res = neighbour_estimates(feats, given, k=4, chunk_rows=7)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dist, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(unit).kneighbors(unit)
    dist, idx = dist[:, 1:], idx[:, 1:]   # self first, dropped
    # the mean cosine similarity in float64, as one block computed it before the blocks
    np.testing.assert_array_equal(res.similarity, (1.0 - dist ** 2 / 2.0).mean(1).astype(np.float32))
    for i in range(40):
        g = given[idx[i]]
        known = (g >= 0).sum(0)
        expect = np.where(known > 0, (g == 1).sum(0) / np.maximum(known, 1), np.nan)
        np.testing.assert_allclose(res.estimate[i], expect, rtol=1e-6)
        np.testing.assert_array_equal(res.support[i], known)


def test_near_duplicates_are_pairs_much_closer_than_the_embedding_s_neighbours():
    """Pairs at cosine >= 0.99 are near-duplicates in an embedding that tells images apart,
    also when every image has its twin; in one that does not (every image within 0.01 of
    many others: a model that trained little), no image is (they all were, one group)."""
    from labelfix.cleaning.neighbours import duplicate_groups, neighbour_estimates

    rng = np.random.default_rng(0)
    given = np.zeros((80, 2), np.int8)
    spread = rng.normal(size=(80, 16)).astype(np.float32)
    spread[1], spread[3] = spread[0] + 1e-3, spread[2] + 1e-3   # two duplicated images
    pairs = neighbour_estimates(spread, given, k=10).duplicates
    assert {tuple(sorted(p)) for p in pairs.tolist()} == {(0, 1), (2, 3)}
    twins = np.repeat(rng.normal(size=(40, 16)), 2, axis=0).astype(np.float32)
    twins += rng.normal(scale=1e-4, size=twins.shape).astype(np.float32)
    groups = duplicate_groups(neighbour_estimates(twins, given, k=10).duplicates, given)
    assert groups["group"].nunique() == 40 and len(groups) == 80
    collapsed = (np.ones((80, 16)) + rng.normal(scale=0.02, size=(80, 16))).astype(np.float32)
    unit = collapsed / np.linalg.norm(collapsed, axis=1, keepdims=True)
    assert (unit @ unit.T >= 0.99).mean() > 0.5   # the old rule's "duplicates"
    assert len(neighbour_estimates(collapsed, given, k=10).duplicates) == 0


def test_neighbour_votes_in_blocks_equal_one_block():
    """The search and the vote count run in blocks of queries (memory grows with k): any
    block size gives the same votes, support, similarities and duplicate pairs."""
    from labelfix.cleaning.neighbours import neighbour_estimates

    rng = np.random.default_rng(3)
    feats = rng.normal(size=(60, 8)).astype(np.float32)
    feats[7] = feats[8] + 1e-4                       # one near-duplicate pair
    feats[20] = np.nan                               # an image that failed to decode
    given = rng.integers(-1, 2, size=(60, 4)).astype(np.int8)
    query, base = np.arange(0, 60, 2), np.arange(1, 60)
    whole = neighbour_estimates(feats, given, query, base, k=12, chunk_rows=10_000)
    for chunk in (1, 7):
        part = neighbour_estimates(feats, given, query, base, k=12, chunk_rows=chunk)
        np.testing.assert_array_equal(part.estimate, whole.estimate)
        np.testing.assert_array_equal(part.support, whole.support)
        np.testing.assert_array_equal(part.similarity, whole.similarity)
        np.testing.assert_array_equal(part.duplicates, whole.duplicates)
    assert np.isnan(whole.estimate[10]).all() and (whole.duplicates == [8, 7]).all(1).any()


def test_near_duplicate_rule_does_not_move_with_k():
    """The near-duplicate threshold is set by the distance to the 10th neighbour whatever
    k is: more neighbours only add candidate pairs. In clusters of 12 similar images
    (cosine distance about 0.06 to the 10th neighbour, 0.9 to the 50th) a pair at 0.0077
    is not a near-duplicate (threshold 0.1 x 0.06) with k = 10 nor with k = 50, where
    the 50th neighbour's scale would have let it in; true twins are found with both."""
    from labelfix.cleaning.neighbours import (DUPLICATE_REFERENCE_RANK, duplicate_threshold, neighbour_estimates,
                                              reference_distance)

    rng = np.random.default_rng(5)
    feats = (np.repeat(rng.normal(size=(10, 32)), 12, axis=0)
             + rng.normal(scale=0.22, size=(120, 32))).astype(np.float32)
    step = rng.normal(size=32)
    feats[1] = feats[0] + 0.67 * step / np.linalg.norm(step)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dist = np.sort(1.0 - (unit @ unit.T), axis=1)[:, 1:]     # self first, dropped
    ranks = np.cumsum(np.ones_like(dist, dtype=bool), axis=1)
    at_10 = duplicate_threshold(reference_distance(dist, ranks <= DUPLICATE_REFERENCE_RANK))
    assert at_10 < 1.0 - unit[0] @ unit[1] < duplicate_threshold(reference_distance(dist, ranks <= 50))
    given = np.zeros((120, 2), np.int8)
    for k in (10, 50):
        assert len(neighbour_estimates(feats, given, k=k).duplicates) == 0
    twins = feats.copy()
    twins[1::2] = twins[0::2] + rng.normal(scale=1e-3, size=(60, 32)).astype(np.float32)
    pairs = [{tuple(sorted(p)) for p in neighbour_estimates(twins, given, k=k).duplicates.tolist()} for k in (10, 50)]
    assert pairs[0] == pairs[1] == {(i, i + 1) for i in range(0, 120, 2)}


def test_verified_cells_survive_export_read_train_clean(tiny, tmp_path):
    """A review's decisions are recorded in the cleaned COCO, read back as verified cells,
    trusted by training and never suggested again by clean."""
    import pandas as pd

    from labelfix.cleaning.clean_run import clean_run
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.io import read_labels
    from labelfix.run import load_run

    run1 = tmp_path / "r1"
    train(cfg_for(tiny, run1, folds=0, rounds=None), log=lambda s: None)
    clean_run(run1, report=False)
    corr = load_run(run1).corrections()
    assert len(corr) >= 2
    corr["accept"] = ["yes", "no"] + [""] * (len(corr) - 2)
    corr.to_csv(run1 / "corrections.csv", index=False)
    cleaned = tmp_path / "cleaned.json"
    res = export_cleaned_coco(run1, cleaned, decisions="accepted", source="csv")
    assert res.verified == 2 and res.changes == 1
    ls = read_labels(cleaned)
    rows = ls.image_rows().loc[corr["image_id"][:2]].to_numpy()
    cols = ls.class_columns().loc[corr["category_id"][:2]].to_numpy()
    assert ls.verified.sum() == 2 and ls.verified[rows, cols].all()
    assert ls.labels[rows[0], cols[0]] == corr["suggested"][0]           # accepted: the new label
    run2 = tmp_path / "r2"
    train(cfg_for(tiny, run2, data=str(cleaned), folds=0, rounds=None), log=lambda s: None)
    assert load_run(run2).labelset.trusted()[rows, cols].all()            # kept in the run
    clean_run(run2, report=False)
    again = load_run(run2).corrections()
    pairs = set(zip(again["image_id"], again["category_id"]))
    assert not pairs & set(zip(corr["image_id"][:2], corr["category_id"][:2]))
    assert (np.load(run2 / "cells" / "score.npy")[rows, cols] == 0).all()
    bad = json.loads(cleaned.read_text())
    bad["labelfix"]["verified"].append([999999, 1])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LabelfixError, match=r"bad.json: labelfix.verified\[2\]: unknown image id 999999"):
        read_labels(tmp_path / "bad.json")
    assert isinstance(pd.read_csv(res.change_log), pd.DataFrame)


def test_unknown_cells_are_judged_by_every_round1_fold_model_when_none_saw_a_label_there(tiny, tmp_path):
    from labelfix.cleaning.clean_run import clean_run, fold_ensemble_logits
    from labelfix.train.crossfit import unknown_judge

    def judge(**kw):   # of a run's recorded (resolved) options
        return unknown_judge(TrainConfig(data="x", out="x", folds=3, **{"mix": "none", **kw}).validate())

    assert judge(loss="bce") == "ensemble" and judge(loss="asl", mix="logicmix") == "ensemble"
    assert judge(loss="an") == "held_out" and judge(loss="role") == "held_out"
    assert judge(mix="balancemix") == "held_out"                       # missing labels assumed negative
    assert judge(mix="logicmix", curriculum_start=2) == "held_out"      # pseudo-labels on unknown cells
    import json as _json

    from labelfix.data.noise import write_noisy_coco
    from labelfix.io import read_labels

    noisy, _, _ = write_noisy_coco(read_labels(tiny["train"]), "missing", 0.3, 0, tmp_path / "missing.json")
    out = tmp_path / "run"
    train(cfg_for(tiny, out, data=str(noisy), folds=2, rounds=2, frozen=True, epochs=3, lr=1e-2), log=lambda s: None)
    assert json.loads((out / "stats" / "state.json").read_text())["rounds"] == 2
    # score of an unknown cell: its probability, on the known cells' scale (docs/cleaning.md)
    res = clean_run(out, report=False, neighbours=0)
    given = np.load(out / "labels.npy")
    folds = np.load(out / "folds.npy")

    def fold_mean(r):
        return np.mean([np.load(fold_dir(out, f, r) / "stats" / "logits.npy").astype(np.float32)
                        for f in range(2)], 0)

    ens = fold_mean(1)   # round 1's models trained on every given label (round 2 drops the suspicious ones)
    assert not np.allclose(ens, fold_mean(2))
    np.testing.assert_allclose(fold_ensemble_logits(__import__("labelfix").load_run(out))[:], ens, rtol=1e-6)
    held = np.load(out / "stats" / "logits.npy").astype(np.float32)
    score = np.asarray(res.issues.score)
    unk = given == -1
    from labelfix.cleaning.scores import unknown_on_known_scale

    r = res.issues.settings["known_error_rate"]
    assert r is not None   # known and unknown cells rank together
    np.testing.assert_allclose(score[unk], unknown_on_known_scale(1 / (1 + np.exp(-ens)), r)[unk],
                               atol=1e-3)   # all round-1 fold models
    # known cells: the last round's held-out disagreement; the GMMs (states, suggestions)
    # fit round 1's held-out losses (labelfix.cleaning.clean_run.management_losses)
    from labelfix.cleaning import find_label_issues
    from labelfix.numeric import bce_logits

    round1 = np.load(out / "stats" / "round1" / "logits.npy").astype(np.float32)
    ref = find_label_issues(given, 1 / (1 + np.exp(-held)), losses=bce_logits(round1, given))
    p_clean = np.asarray(res.issues.p_clean)
    np.testing.assert_allclose(p_clean[~unk], ref.p_clean[~unk], atol=1e-5)
    assert not np.allclose(p_clean[~unk], find_label_issues(given, 1 / (1 + np.exp(-held))).p_clean[~unk], atol=1e-3)
    # a frozen backbone never learns from random weights: the known cells' judge is the
    # mean of both rounds' held-out logits (docs/cleaning.md "Rounds as an ensemble")
    from labelfix.cleaning.clean_run import known_judge_logits

    judge = (round1 + held) / 2
    assert any("judged by the mean of the 2 rounds' held-out logits" in n for n in res.notes)
    np.testing.assert_allclose(score[~unk], np.abs((given == 1) - 1 / (1 + np.exp(-judge)))[~unk], atol=1e-3)
    assert not np.allclose(judge[~unk], held[~unk], atol=1e-2)
    assert _json.loads((out / "stats" / "state.json").read_text())["out_of_sample"] and folds.max() == 1
    # the same run had its backbone learned from random weights: the last round alone judges
    import shutil

    import yaml

    from labelfix.run import Run

    scratch = tmp_path / "from_scratch"
    shutil.copytree(out, scratch)
    doc = yaml.safe_load((scratch / "config.yaml").read_text())
    doc["train"].update(frozen=False, weights=None, pretrained=False)
    (scratch / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    np.testing.assert_array_equal(np.asarray(known_judge_logits(Run(scratch))[:]), np.load(out / "stats" / "logits.npy"))
    notes = clean_run(scratch, report=False, neighbours=0).notes
    assert not any("rounds' held-out logits" in n for n in notes)
    assert not any("in-sample statistics" in n for n in notes)   # a cross-fitted run is out of sample
    np.testing.assert_allclose(np.asarray(known_judge_logits(Run(out))[:]), judge, rtol=1e-6)


def test_no_dynamics_trains_the_same_folds_and_keeps_the_last_epochs_loss(tiny, tmp_path):
    """--no-dynamics: the fold models skip the per-epoch pass over their held-out images;
    they train exactly as before (same held-out logits, suspicious cells and ensemble),
    loss_mean is the last epoch's held-out loss, `clean --score loss` says so, and
    without --folds the option is refused."""
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.train.stats import cell_bce

    on, off = tmp_path / "on", tmp_path / "off"
    train(cfg_for(tiny, on, epochs=3), log=lambda s: None)
    train(cfg_for(tiny, off, epochs=3, dynamics=False), log=lambda s: None)
    for name in ("logits.npy", "round1/logits.npy", "round1/suspicious.npy"):
        np.testing.assert_array_equal(np.load(on / "stats" / name), np.load(off / "stats" / name))
    a = torch.load(on / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(off / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    given = np.asarray(LabelSet.load(off).labels)
    last = cell_bce(np.load(off / "stats" / "round1" / "logits.npy"), given)
    np.testing.assert_allclose(np.load(off / "stats" / "round1" / "loss_mean.npy"), last, rtol=1e-5, equal_nan=True)
    assert not np.allclose(np.load(on / "stats" / "round1" / "loss_mean.npy"), last, equal_nan=True)
    fold = pd.read_csv(fold_dir(off, 0, 1) / "metrics.csv")
    assert fold["stats_seconds"].iloc[:-1].max() < fold["stats_seconds"].iloc[-1]
    assert any("--no-dynamics" in n for n in clean_run(off, report=False, scorer="loss").notes)
    assert not any("--no-dynamics" in n for n in clean_run(on, report=False, scorer="loss").notes)
    with pytest.raises(LabelfixError, match="--no-dynamics: .*no effect without --folds"):
        train(cfg_for(tiny, tmp_path / "plain", folds=0, dynamics=False), log=lambda s: None)
    assert not (tmp_path / "plain").exists()


# ------------------------------------------------------------------ --fold-workers (labelfix.train.foldpool)
def test_fold_workers_train_the_same_fold_models_side_by_side(tiny, tmp_path):
    """Two worker processes (one thread each, as this test's process) give the statistics and
    ensemble of the sequential run."""
    seq, par = tmp_path / "seq", tmp_path / "par"
    train(cfg_for(tiny, seq), log=lambda s: None)
    lines = []
    summary = train(cfg_for(tiny, par, fold_workers=2), log=lines.append)
    for name in ("logits.npy", "loss_mean.npy", "round1/suspicious.npy"):
        np.testing.assert_array_equal(np.load(seq / "stats" / name), np.load(par / "stats" / name))
    a = torch.load(seq / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(par / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert len(summary["metrics"]) == 3 * 2 * 2   # folds x rounds x epochs, read back from every fold
    # every fold's log lines reach the caller, prefixed with their fold
    assert any(line.startswith("cross-fitting round 2/2, fold 3/3: epoch 2") for line in lines), lines[:5]


def test_one_fold_pool_trains_runs_in_turn(tiny, tmp_path):
    """``labelfix demo``'s review rounds share one FoldPool: each run gives the statistics of
    a run with its own pool, in the same two processes, which stay open until the pool's
    owner closes it; a closed pool and a pool of the wrong size are refused."""
    from labelfix.train.foldpool import FoldPool

    own = tmp_path / "own"
    train(cfg_for(tiny, own, fold_workers=2), log=lambda s: None)
    with FoldPool(2, 3).start() as pool:
        pids = [p.pid for p in pool._procs]
        assert len(pids) == 2 and all(p.is_alive() for p in pool._procs)
        for name in ("first", "second"):
            train(cfg_for(tiny, tmp_path / name, fold_workers=2), log=lambda s: None, fold_pool=pool)
            for stat in ("logits.npy", "round1/suspicious.npy"):
                np.testing.assert_array_equal(np.load(own / "stats" / stat), np.load(tmp_path / name / "stats" / stat))
        assert [p.pid for p in pool._procs] == pids and all(p.is_alive() for p in pool._procs)
        with pytest.raises(ValueError, match="fold_pool has 2 workers; this run trains 3"):
            train(cfg_for(tiny, tmp_path / "three", fold_workers=3), log=lambda s: None, fold_pool=pool)
        assert not (tmp_path / "three").exists()   # refused before anything is written
    assert not pool._procs
    with pytest.raises(RuntimeError, match="FoldPool: closed"):
        train(cfg_for(tiny, tmp_path / "late", fold_workers=2), log=lambda s: None, fold_pool=pool)
    assert not (tmp_path / "late").exists()


def test_fold_workers_refusals(tiny, tmp_path):
    with pytest.raises(LabelfixError, match="--fold-workers: .*no effect without --folds"):
        cfg_for(tiny, tmp_path / "a", folds=0, fold_workers=2).validate()
    with pytest.raises(LabelfixError, match="--fold-workers: not with --frozen"):
        cfg_for(tiny, tmp_path / "b", frozen=True, fold_workers=2).validate()
    with pytest.raises(LabelfixError, match="--fold-workers: callbacks run in this process"):
        train(cfg_for(tiny, tmp_path / "c", fold_workers=2), callbacks=[object()], log=lambda s: None)
    # a fold process cannot start loader processes: an explicit --workers is refused
    with pytest.raises(LabelfixError, match="--workers: not with --fold-workers above 1"):
        cfg_for(tiny, tmp_path / "d", fold_workers=2, workers=2).validate()


def test_fold_workers_train_with_the_default_loader_workers(tiny, tmp_path):
    """--fold-workers 2 without --workers (the README's CPU command) trains: the loader
    workers default to 0 there (before: 2, and every fold process crashed with "daemonic
    processes are not allowed to have children")."""
    cfg = cfg_for(tiny, tmp_path / "run", fold_workers=2, workers=None, rounds=1, epochs=1)
    assert cfg.validate().loader_workers == 0
    assert cfg_for(tiny, tmp_path / "x", workers=None).loader_workers > 0   # one process: loader workers
    summary = train(cfg, log=lambda s: None)
    assert (tmp_path / "run" / "stats" / "logits.npy").exists() and summary is not None


def test_a_fold_error_in_a_worker_is_one_line_in_the_driver(tiny, tmp_path):
    """A fold model that refuses its data (here: no image can be read) stops the run with
    that fold's own message."""
    import shutil

    lonely = tmp_path / "noimages"
    lonely.mkdir()
    shutil.copy(tiny["train"], lonely / "train.json")   # the images stay behind
    with pytest.raises(LabelfixError, match="no .*readable|could be read|cannot be read|none of"):
        train(cfg_for(tiny, tmp_path / "run", data=str(lonely / "train.json"), fold_workers=2), log=lambda s: None)


def _fold_train_cmd(tiny, out, epochs):
    import sys

    return [sys.executable, "-m", "labelfix", "train", str(tiny["train"]), "--out", str(out), "--backbone",
            "test_resnet", "--img-size", "32", "--epochs", str(epochs), "--batch-size", "8", "--workers", "0",
            "--no-progress", "--lr", "1e-3", "--no-randaugment", "--hflip", "0", "--folds", "3", "--rounds", "1",
            "--fold-workers", "2"]


def _wait_for_fold_epochs(run, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(run.glob("folds/round1/fold*/checkpoints/last.pt"))) >= 2:
            return
        time.sleep(0.2)
    raise AssertionError("the fold workers did not finish an epoch")


def test_fold_workers_stop_on_ctrl_c_and_resume(tiny, tmp_path):
    """SIGINT to the driver alone: the workers stop at a clean point, the command says
    so in one line (exit 130), and --resume finishes the run."""
    import signal
    import subprocess

    run = tmp_path / "run"
    proc = subprocess.Popen(_fold_train_cmd(tiny, run, 400), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_fold_epochs(run)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped: interrupted while training folds" in err and "Traceback" not in err
    done = [int(torch.load(p, weights_only=True)["epoch"]) for p in run.glob("folds/round1/fold*/checkpoints/last.pt")]
    assert done and max(done) < 400
    # finish with one epoch more than the furthest fold (fewer than a fold trained is refused)
    res = subprocess.run(_fold_train_cmd(tiny, run, max(done) + 1) + ["--resume"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "checkpoints" / "last.pt").exists()
    # the driver's own lines reach the command's output (before: dropped without a log function)
    assert "fold 1/3: training on" in err and f"cross-fitted 3 folds: held-out statistics in {run}" in res.stderr


def test_fold_workers_exit_when_the_driver_is_killed(tiny, tmp_path):
    import signal
    import subprocess

    import psutil

    run = tmp_path / "run"
    proc = subprocess.Popen(_fold_train_cmd(tiny, run, 400), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_fold_epochs(run)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.pid for p in alive]
