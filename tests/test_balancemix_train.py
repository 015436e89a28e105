"""BalanceMix inside training: missing labels as assumed negatives, minority sampler
weights, warm-up, label GMMs, re-labeling with the current model per mini-batch (or once
per epoch, or from the evaluation pass; "auto" between them), the truth table of the training targets, trusted cells, exact resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from labelfix.errors import LabelfixError
from labelfix.cleaning.states import DELTA_MULTI
from labelfix.mixing.balancemix import minority_sampling_weights
from labelfix.numeric import sigmoid
from labelfix.train import TrainConfig, train
from labelfix.train.balancemix import BalanceMixMixer, clean_probability, train_losses
from labelfix.train.mixers import Batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("tinybm"), n_train=24, n_test=8, size=32, seed=2)


def cfg_for(tiny, out, **kw) -> TrainConfig:
    base = dict(data=str(tiny["train"]), out=str(out), backbone="test_resnet", img_size=32, epochs=2,
                batch_size=8, workers=0, progress=False, lr=1e-3, mix="balancemix", balancemix_warmup=2,
                randaugment=False)
    base.update(kw)
    return TrainConfig(**base)


class Capture:
    def __init__(self):
        self.rows, self.p_clean, self.weights, self.logits, self.views = [], [], [], [], []

    def on_epoch_end(self, trainer, epoch, row):
        self.rows.append(row)
        mixer = trainer.mixer
        self.p_clean.append(None if mixer.p_clean is None else mixer.p_clean.copy())
        self.weights.append(trainer.sampler.minority_weights.copy())
        self.logits.append(np.load(trainer.out / "stats" / "logits.npy").astype(np.float32))
        self.views.append(trainer.train_ds.views)


def test_balancemix_epochs(tiny, tmp_path):
    cap = Capture()
    out = tmp_path / "run"
    train(cfg_for(tiny, out, epochs=3, balancemix_refine="batch"), callbacks=[cap], log=lambda s: None)
    labels = np.load(out / "labels.npy")
    # minority weights every epoch from the evaluation pass's probabilities
    for logits, w in zip(cap.logits, cap.weights):
        np.testing.assert_allclose(w, minority_sampling_weights(sigmoid(logits), labels).weights, rtol=1e-6)
    # epoch 1 is warm-up: no management, no re-labeling view (flips: 1 once managed,
    # view 2 of c beside the training image)
    assert cap.p_clean[0] is None and cap.p_clean[1] is not None
    assert cap.views == [0, 0, 1]
    p_clean = clean_probability(train_losses(cap.logits[1], labels, np.arange(len(labels))), labels)
    np.testing.assert_allclose(cap.p_clean[1], np.nan_to_num(p_clean, nan=1.0))
    assert cap.rows[1]["cells_nonclean"] == int((cap.p_clean[1] <= 0.5).sum())
    # epoch 3 trained with the management of epoch 2: its cells got states
    assert cap.rows[2]["cells_clean"] > 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"minority_min_max_ratio", "cells_nonclean", "mixer_seconds"} <= set(metrics.columns)


class FakeContext:
    """A TrainContext whose 'current model' returns fixed probabilities per row and view:
    ``c`` (N, K) for both views, or ``c`` (N, 2, K) per view."""

    def __init__(self, labels, c, trusted=None):
        self.labels = np.asarray(labels, np.int8)
        self.trusted = np.zeros(self.labels.shape, bool) if trusted is None else trusted
        self.train_rows = np.arange(len(labels))
        c = np.asarray(c, np.float32)
        self.c = c if c.ndim == 3 else np.stack([c, c], axis=1)
        self.rank, self.world_size, self.ema_model, self.out, self.sampler = 0, 1, None, None, None
        self.asked = []

    def sum_over_ranks(self, values):
        return np.asarray(values, np.float64)

    def probabilities(self, images):
        code = images.flatten(1)[:, 0].long().numpy()   # each image tensor carries 10 * row + view
        self.asked.append(code.tolist())
        return torch.from_numpy(self.c[code // 10, code % 10])


def _mixer(labels, c, p_clean, **kw):
    kw.setdefault("balancemix_refine", "batch")   # c from the fake context's 'current model'
    kw.setdefault("randaugment", True)   # views from the loader
    cfg = TrainConfig(data="x", out="x", mix="balancemix", batch_size=len(labels), **kw)
    ctx = FakeContext(labels, c)
    mixer = BalanceMixMixer(cfg, ctx)
    mixer.p_clean = np.asarray(p_clean, np.float32)
    return mixer, ctx


def _batch(n, views=True):
    """Images (view 1 of c) carry 10 * row + 0, their one extra view 10 * row + 1."""
    code = 10 * torch.arange(n, dtype=torch.float32)
    images = code.view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()
    v = (code + 1).view(n, 1, 1, 1, 1).expand(n, 1, 3, 2, 2).clone()
    return Batch(images, torch.zeros(n, 1, dtype=torch.int8), torch.arange(n), torch.zeros(n, dtype=torch.long),
                 v if views else None)


def test_target_truth_table_covers_unknown_cells():
    """given / p_G / c -> training target and weight (delta 0.975): unknown cells are
    assumed negatives that management may turn positive."""
    #          given  p_G   c      target weight   state
    table = [(1,     0.9, 0.5,   1,     1.0),   # clean positive
             (0,     0.9, 0.99,  0,     1.0),   # clean negative: c is not asked
             (-1,    0.9, 0.99,  0,     1.0),   # unknown, clean: an assumed negative
             (-1,    0.2, 0.99,  1,     1.0),   # unknown, not clean, c > delta: re-labeled positive
             (-1,    0.2, 0.5,   0,     0.2),   # unknown, ambiguous: negative with weight p_G
             (-1,    0.2, 0.01,  0,     1.0),   # unknown, c < 1 - delta: re-labeled negative
             (1,     0.1, 0.01,  0,     1.0),   # positive re-labeled negative
             (0,     0.3, 0.99,  1,     1.0),   # negative re-labeled positive
             (1,     0.3, 0.6,   1,     0.3)]   # ambiguous positive keeps its label, weight p_G
    labels = np.array([[r[0]] for r in table])
    mixer, ctx = _mixer(labels, [[r[2]] for r in table], [[r[1]] for r in table])
    assert mixer.delta == DELTA_MULTI
    target, weight = mixer._targets(_batch(len(table)), torch.arange(len(table)))
    np.testing.assert_array_equal(target[:, 0].numpy(), [r[3] for r in table])
    np.testing.assert_allclose(weight[:, 0].numpy(), [r[4] for r in table], rtol=1e-6)
    # only images with a non-clean cell are refined, with the current model: the second
    # view only where it can change a decision (c 0.5 and 0.6 stay ambiguous whatever it says)
    assert ctx.asked == [[30, 40, 50, 60, 70, 80], [31, 51, 61, 71]]


@pytest.mark.parametrize("delta", [DELTA_MULTI, 0.55])
def test_batch_refine_second_view_pruning_is_exact(delta):
    """Scoring the second view only where it can change a decision gives the decisions
    of c = the two views' mean on every cell (Eq. 9)."""
    from labelfix.cleaning.states import assign_states_block

    rng = np.random.default_rng(0)
    n, k = 64, 5
    labels = rng.choice(np.array([1, 0, -1], np.int8), size=(n, k))
    # probabilities piled near 0 and 1, where decisions happen
    c = np.clip(rng.beta(0.3, 0.3, size=(n, 2, k)), 0, 1).astype(np.float32)
    p_clean = rng.uniform(size=(n, k)).astype(np.float32)
    p_clean[:8] = 0.9   # images without a non-clean cell
    mixer, ctx = _mixer(labels, c, p_clean, balancemix_delta=delta)
    target, weight = mixer._targets(_batch(n), torch.arange(n))
    full = (c[:, 0] + c[:, 1]) / 2
    _, want_t, want_w = assign_states_block(np.where(labels == -1, 0, labels), p_clean, full, delta=delta)
    np.testing.assert_array_equal(target.numpy(), (want_t == 1).astype(np.float32))
    np.testing.assert_array_equal(weight.numpy(), want_w)
    first, second = ctx.asked
    assert first == [10 * i for i in np.flatnonzero((p_clean <= 0.5).any(1))] and first[0] == 80
    if delta == DELTA_MULTI:   # some images need one view only (how many: benchmarks)
        assert 0 < len(second) < len(first)


def test_batch_refine_without_augmentation_scores_the_training_image():
    """A deterministic training transform: the loader decodes no views, and c is the
    current model's probability on the training image (one forward pass)."""
    labels = np.array([[1], [0], [1]], np.int8)
    mixer, ctx = _mixer(labels, [[0.01], [0.99], [0.5]], [[0.2], [0.2], [0.9]], randaugment=False, hflip=0.0)
    assert mixer.views(5) == 0
    target, weight = mixer._targets(_batch(3, views=False), torch.arange(3))
    assert ctx.asked == [[0, 10]]
    np.testing.assert_array_equal(target[:, 0].numpy(), [0, 1, 1])


def test_single_positive_given_positives_are_never_changed():
    """Single-positive data: every given positive is trusted (delta 0.55 re-labels
    assumed negatives only)."""
    labels = np.full((4, 3), -1, np.int8)
    labels[np.arange(4), [0, 1, 2, 0]] = 1
    c = np.full((4, 3), 0.01, np.float32)
    c[:, 1] = 0.9
    mixer, _ = _mixer(labels, c, np.full((4, 3), 0.1))
    mixer.p_clean[mixer.trusted] = 1.0   # what on_epoch_end does
    assert mixer.single_positive and mixer.delta == 0.55
    target, weight = mixer._targets(_batch(4), torch.arange(4))
    assert (target.numpy()[labels == 1] == 1).all() and (weight.numpy()[labels == 1] == 1).all()
    assert (target.numpy()[:, 1] == 1).all()   # c = 0.9 > 0.55: the assumed negatives turn positive


def test_mixed_pair_inherits_random_member():
    """The loss sees the random member's weight; the target is the l-weighted mix with l >= 0.5."""
    labels = np.array([[1, 0], [0, -1], [0, 1], [1, 1]], np.int8)
    mixer, _ = _mixer(labels, np.full((4, 2), 0.5), np.full((4, 2), 0.25))
    batch = _batch(4)
    batch.slots = torch.tensor([0, 0, 1, 1])
    mixed = mixer.mix(batch)
    assert mixed.index.tolist() == [0, 1] and bool(mixed.known.all())
    assert torch.allclose(mixed.weight, torch.full((2, 2), 0.25))
    y_r = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y_m = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    lam = ((mixed.target - y_m) / (y_r - y_m))[y_r != y_m]
    assert torch.all(lam >= 0.5 - 1e-6) and torch.all(lam <= 1 + 1e-6)


@pytest.mark.parametrize("refine", ["batch", "evaluation"])
def test_balancemix_resume_is_exact(tiny, tmp_path, refine):
    class Stop(Exception):
        pass

    class StopAt:
        def on_step(self, trainer, epoch, step):
            if (epoch, step) == (2, 1):
                raise Stop

    ref, run = tmp_path / "ref", tmp_path / "run"
    # resume rebuilds the management from stats/; delta 0.55 makes c decide re-labels, so
    # a stale or missing c after the resume changes the weights
    kw = dict(balancemix_warmup=1, epochs=3, balancemix_refine=refine, balancemix_delta=0.55)
    train(cfg_for(tiny, ref, **kw), log=lambda s: None)
    with pytest.raises(Stop):
        train(cfg_for(tiny, run, **kw), callbacks=[StopAt()], log=lambda s: None)
    train(cfg_for(tiny, run, resume=True, **kw), log=lambda s: None)
    assert pd.read_csv(ref / "metrics.csv")["cells_relabeled"].sum() > 0
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resume_keeps_the_schedule_the_run_started_with(tiny, tmp_path):
    """A run started when the unset schedule meant "batch" (config.yaml: train
    balancemix_refine null, dataset.mixing "batch") resumes with "batch" although "auto"
    now resolves to "evaluation" here; an explicit other schedule is refused."""

    ref, run = tmp_path / "ref", tmp_path / "run"
    kw = dict(balancemix_warmup=1, balancemix_delta=0.55, hflip=0.0)   # auto would resolve to evaluation
    train(cfg_for(tiny, ref, epochs=2, balancemix_refine="batch", **kw), log=lambda s: None)
    train(cfg_for(tiny, run, epochs=1, balancemix_refine="batch", **kw), log=lambda s: None)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    doc["train"]["balancemix_refine"] = None     # what an older version wrote
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(LabelfixError, match="--resume with different option.*--balancemix-refine"):
        train(cfg_for(tiny, run, epochs=2, resume=True, balancemix_refine="evaluation", **kw), log=lambda s: None)
    train(cfg_for(tiny, run, epochs=2, resume=True, **kw), log=lambda s: None)
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["mixing"]["balancemix_refine"] == "batch"
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_frozen_epoch_refine_c_is_a_probability(tiny, tmp_path):
    """--frozen has one (feature) view: the once-per-epoch c is its probability, not its logit."""
    out = tmp_path / "run"
    train(cfg_for(tiny, out, frozen=True, epochs=1, balancemix_warmup=1, balancemix_refine="epoch", lr=1e-2),
          log=lambda s: None)
    c = np.load(out / "stats" / "two_view.npy").astype(np.float32)
    logits = np.load(out / "stats" / "logits.npy").astype(np.float32)
    scored = ~np.isnan(c)
    assert scored.any()
    np.testing.assert_allclose(c[scored], sigmoid(logits)[scored], atol=2e-3)


@pytest.mark.parametrize("randaugment", [False, True])
def test_refine_views_use_the_training_augmentation(tiny, tmp_path, randaugment):
    """The re-labeling views come from the augmentation the model trained with: views from
    an unseen augmentation (RandAugment on a run without it) gave inflated probabilities
    and mostly wrong label changes on the benchmark (docs/training.md)."""
    seen = {}

    lines = []

    class Grab:
        def on_epoch_end(self, trainer, epoch, row):
            seen["views"] = trainer.train_ds.views
            seen["transform"] = trainer.train_ds.base.transform
            seen["train_tf"] = trainer.train_tf

    train(cfg_for(tiny, tmp_path / "run", epochs=2, balancemix_warmup=1, randaugment=randaugment,
                  hflip=0.0 if randaugment else 0.5, balancemix_refine="batch"), callbacks=[Grab()], log=lines.append)
    assert seen["views"] == 1 and seen["transform"] is seen["train_tf"]
    assert not any("--balancemix-warmup" in line for line in lines)   # W < --epochs: no note
    names = [type(t).__name__ for t in seen["transform"].transforms]
    assert ("RandAugment" in names) == randaugment, names
    assert ("RandomHorizontalFlip" in names) == (not randaugment), names   # --hflip reaches the engine


def test_epoch_refine_scores_only_nonclean_cells(tiny, tmp_path):
    cap = Capture()
    out = tmp_path / "run"
    lines = []
    train(cfg_for(tiny, out, epochs=1, balancemix_warmup=1, balancemix_refine="epoch"), callbacks=[cap],
          log=lines.append)
    # W = --epochs is allowed (the statistics below) and said: the management never trained
    assert sum(line.startswith("note: --balancemix-warmup 1 equals --epochs 1") for line in lines) == 1
    two_view = np.load(out / "stats" / "two_view.npy")
    # as the run compared it with delta: float16 rounded c in (0.97485, 0.975] up past 0.975
    assert two_view.dtype == np.float32
    nonclean = cap.p_clean[0] <= 0.5
    assert nonclean.any() and (~nonclean).any()
    np.testing.assert_array_equal(~np.isnan(two_view), nonclean)
    assert cap.rows[0]["rescored_images"] == int(nonclean.any(1).sum())
    assert cap.views[0] == 0


def test_evaluation_refine_takes_c_from_the_evaluation_pass(tiny, tmp_path):
    """--balancemix-refine evaluation: c of every non-clean cell is the epoch's evaluation
    pass probability (no extra views), and the next epoch trains on those decisions."""
    cap = Capture()
    seen = []

    class Grab:
        def on_epoch_end(self, trainer, epoch, row):
            seen.append(None if trainer.mixer.two_view is None else trainer.mixer.two_view.copy())

    out = tmp_path / "run"
    train(cfg_for(tiny, out, epochs=2, balancemix_warmup=1, balancemix_refine="evaluation", balancemix_delta=0.55),
          callbacks=[cap, Grab()], log=lambda s: None)
    nonclean = cap.p_clean[0] <= 0.5
    assert nonclean.any() and (~nonclean).any()
    c = seen[0]
    np.testing.assert_array_equal(~np.isnan(c), nonclean)
    np.testing.assert_allclose(c[nonclean], sigmoid(cap.logits[0])[nonclean], rtol=1e-6)
    assert cap.views == [0, 0]   # no re-labeling views are decoded
    assert cap.rows[1]["cells_relabeled"] > 0
    assert not (out / "stats" / "two_view.npy").exists()


@pytest.mark.parametrize("augment, want", [(dict(randaugment=False, hflip=0.0), "evaluation"),
                                           (dict(randaugment=True, hflip=0.0), "batch"),
                                           (dict(randaugment=False, hflip=0.5), "batch")])
def test_auto_refine_is_batch_only_when_training_images_are_augmented(tiny, tmp_path, augment, want):
    """The default schedule: with a deterministic training transform the two views are the
    evaluation view, so c comes from the evaluation pass; with augmentation, per batch."""
    out = tmp_path / "run"
    train(cfg_for(tiny, out, epochs=1, balancemix_warmup=1, **augment), log=lambda s: None)

    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["dataset"]["mixing"]["balancemix_refine"] == want   # the resolved schedule is recorded


def test_mixer_options_are_checked():

    with pytest.raises(LabelfixError, match="--balancemix-warmup: not used by --mix logicmix"):
        TrainConfig(data="x", out="x", mix="logicmix", balancemix_warmup=3).validate()
    with pytest.raises(LabelfixError, match="--balancemix-sampler: 'max' is not one of sum, mean"):
        TrainConfig(data="x", out="x", mix="balancemix", balancemix_sampler="max").validate()


class _Sampler:
    def set_minority_weights(self, w):
        self.weights = np.asarray(w)


def test_mean_sampler_skips_missing_cells_and_differs_from_sum_only_when_labels_are_missing():
    rng = np.random.default_rng(0)
    full = (rng.random((40, 5)) < 0.3).astype(np.int8)
    missing = np.where(rng.random(full.shape) < 0.5, np.int8(-1), full)
    logits = rng.normal(0, 2, full.shape).astype(np.float32)

    def weights(labels, sampler):
        mixer, ctx = _mixer(labels, np.zeros(labels.shape), np.ones(labels.shape), balancemix_sampler=sampler,
                            balancemix_warmup=99)
        ctx.sampler = _Sampler()
        mixer.on_epoch_end(0, logits, fresh=True)
        return ctx.sampler.weights / ctx.sampler.weights.sum()

    np.testing.assert_allclose(weights(full, "mean"), weights(full, "sum"), rtol=1e-5)
    assert not np.allclose(weights(missing, "mean"), weights(missing, "sum"), rtol=1e-3)
    # "mean" is minority_sampling_weights over the given labels, unknown cells skipped
    want = minority_sampling_weights(1 / (1 + np.exp(-logits)), missing, score_reduction="mean").weights
    np.testing.assert_allclose(weights(missing, "mean"), want / want.sum(), rtol=1e-5)


def test_resume_accepts_auto_for_an_unset_schedule(tmp_path):
    from labelfix.train.checkpoint import check_resume_compatible

    base = dict(data="x", out=str(tmp_path), mix="balancemix", loss="bce")   # a run records its resolved loss
    unset = TrainConfig(**base).validate()
    check_resume_compatible(unset, TrainConfig(**base, balancemix_refine="auto").validate(), tmp_path)
    with pytest.raises(LabelfixError, match="--balancemix-refine"):
        check_resume_compatible(unset, TrainConfig(**base, balancemix_refine="batch").validate(), tmp_path)


@pytest.mark.parametrize("kw, ok", [
    (dict(epochs=5), False),                                           # default warm-up 10: never runs
    (dict(epochs=12), True),
    (dict(epochs=3, balancemix_warmup=4), False),
    (dict(epochs=3, balancemix_warmup=3), True),                       # fitted once, after the last epoch
])
def test_warmup_that_never_runs_is_refused(kw, ok):
    cfg = TrainConfig(data="x", out="x", mix="balancemix", **kw)
    if ok:
        cfg.validate()
    else:
        with pytest.raises(LabelfixError, match="--balancemix-warmup: .*would never run; pass --balancemix-warmup"):
            cfg.validate()
