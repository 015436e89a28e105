"""BalanceMix inside training: minority sampler weights, warm-up, label GMMs, two-view
re-labeling only of images with a non-clean cell, managed targets, exact resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from labelfix.cleaning.states import assign_states
from labelfix.mixing.balancemix import minority_sampling_weights
from labelfix.train import TrainConfig, train
from labelfix.train import balancemix as bmx
from labelfix.train.engine import Trainer


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("tinybm"), n_train=24, n_test=8, size=32, seed=2)


def cfg_for(tiny, out, **kw) -> TrainConfig:
    base = dict(data=str(tiny["train"]), out=str(out), backbone="test_resnet", img_size=32, epochs=2,
                batch_size=8, workers=0, progress=False, lr=1e-3, mix="balancemix", balancemix_warmup=2,
                randaugment=False, balancemix_clean_threshold=0.5)
    base.update(kw)
    return TrainConfig(**base)


class Capture:
    def __init__(self):
        self.rows, self.managed, self.weights, self.logits = [], [], [], []

    def on_epoch_end(self, trainer, epoch, row):
        self.rows.append(row)
        self.managed.append(trainer.managed)
        self.weights.append(None if trainer.sampler.minority_weights is None
                            else trainer.sampler.minority_weights.copy())
        self.logits.append(np.load(trainer.out / "stats" / "logits.npy").astype(np.float32))


def test_balancemix_epochs(tiny, tmp_path):
    cap = Capture()
    out = tmp_path / "run"
    train(cfg_for(tiny, out), callbacks=[cap], log=lambda s: None)
    labels = np.load(out / "labels.npy")
    # minority weights every epoch from the evaluation pass's probabilities
    for logits, w in zip(cap.logits, cap.weights):
        expect = minority_sampling_weights(1 / (1 + np.exp(-logits.astype(np.float64))), labels).weights
        np.testing.assert_allclose(w, expect, rtol=1e-6)
    # epoch 1 is warm-up: no management; from epoch 2 on the labels are managed
    assert cap.managed[0] is None and cap.managed[1] is not None
    assert "cells_clean" not in cap.rows[0] and cap.rows[1]["cells_clean"] > 0
    # two_view.npy: NaN except on non-clean known cells, whose images were re-scored
    two_view = np.load(out / "stats" / "two_view.npy").astype(np.float32)
    losses = bmx.train_losses(cap.logits[1], labels, np.arange(len(labels)))
    p_clean = bmx.clean_probability(losses, labels)
    nonclean = (labels >= 0) & (np.nan_to_num(p_clean, nan=1.0) <= 0.5)
    assert nonclean.any() and (~nonclean).any()
    np.testing.assert_array_equal(~np.isnan(two_view), nonclean)
    assert cap.rows[1]["rescored_images"] == int(nonclean.any(1).sum())
    assert np.nanmin(two_view) >= 0 and np.nanmax(two_view) <= 1
    # managed target / weight = assign_states on those arrays
    state, target, weight = assign_states(labels, p_clean, two_view.astype(np.float32), clean_threshold=0.5,
                                          delta=0.975)
    np.testing.assert_array_equal(cap.managed[1].target, target)
    np.testing.assert_allclose(cap.managed[1].weight, weight)
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"minority_min_max_ratio", "cells_clean", "cells_relabeled", "cells_ambiguous",
            "balancemix_seconds"} <= set(metrics.columns)


def test_mixed_pair_inherits_random_member(tiny, tmp_path, monkeypatch):
    """The loss sees the random member's known mask and weight; the target is the
    l-weighted mix with l >= 0.5."""
    seen = []
    trainer = Trainer(cfg_for(tiny, tmp_path / "r", epochs=1))

    def spy(logits, target, known, weight=None, index=None):
        seen.append((target.clone(), known.clone(), None if weight is None else weight.clone(), index.clone()))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], target[known])

    trainer._prepare_data()
    trainer._build()
    trainer.loss_fn = spy
    labels = torch.tensor(trainer.labels[:4])
    images = torch.zeros(4, 3, 32, 32)
    trainer.managed = bmx.Management(target=trainer.labels.copy(),
                                     weight=np.full(trainer.labels.shape, 0.25, np.float32), counts={})
    trainer._compute_loss(images, labels, torch.arange(4), torch.tensor([0, 0, 1, 1]))
    target, known, weight, index = seen[0]
    assert index.tolist() == [0, 1]
    np.testing.assert_array_equal(known.numpy(), trainer.labels[:2] >= 0)
    assert torch.all(weight == 0.25)
    y_r = torch.tensor(trainer.labels[:2] == 1, dtype=torch.float32)
    y_m = torch.tensor(trainer.labels[2:4] == 1, dtype=torch.float32)
    lam = (target - y_m) / (y_r - y_m)
    lam = lam[(y_r != y_m)]
    assert torch.all(lam >= 0.5 - 1e-6) and torch.all(lam <= 1 + 1e-6)


def test_balancemix_resume_is_exact(tiny, tmp_path):
    class Stop(Exception):
        pass

    class StopAt:
        def on_step(self, trainer, epoch, step):
            if (epoch, step) == (1, 1):
                raise Stop

    ref, run = tmp_path / "ref", tmp_path / "run"
    kw = dict(balancemix_warmup=1)   # management from epoch 1: resume rebuilds it from stats/
    train(cfg_for(tiny, ref, **kw), log=lambda s: None)
    with pytest.raises(Stop):
        train(cfg_for(tiny, run, **kw), callbacks=[StopAt()], log=lambda s: None)
    train(cfg_for(tiny, run, resume=True, **kw), log=lambda s: None)
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    np.testing.assert_array_equal(np.load(ref / "stats" / "two_view.npy"), np.load(run / "stats" / "two_view.npy"))


@pytest.mark.parametrize("randaugment", [False, True])
def test_two_views_use_the_training_augmentation(tiny, tmp_path, randaugment):
    """The re-labeling views come from the augmentation the model trained with: views from
    an unseen augmentation (RandAugment on a run without it) gave inflated probabilities
    and mostly wrong label changes on the benchmark (docs/training.md)."""
    seen = {}

    class Grab:
        def on_epoch_end(self, trainer, epoch, row):
            seen["views"] = trainer.view_ds.base.transform
            seen["train"] = trainer.train_ds.base.transform
            seen["rescored"] = row["rescored_images"]

    train(cfg_for(tiny, tmp_path / "run", epochs=1, balancemix_warmup=1, randaugment=randaugment,
                  hflip=0.0 if randaugment else 0.5), callbacks=[Grab()], log=lambda s: None)
    assert seen["rescored"] > 0   # the two-view pass ran
    assert seen["views"] is seen["train"]
    names = [type(t).__name__ for t in seen["views"].transforms]
    assert ("RandAugment" in names) == randaugment, names
    assert ("RandomHorizontalFlip" in names) == (not randaugment), names   # --hflip reaches the engine
