"""The mixing interface: registry, LogicMix's two loss settings and Curriculum Labeling,
Infinite Class Mixup's losses against a direct computation, and mixing inside training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfix.errors import LabelfixError
from labelfix.losses import create_loss
from labelfix.mixing.icmixup import icm_loss_multilabel, icm_loss_single, normalised_positive_sets
from labelfix.train import TrainConfig, train
from labelfix.train.config import MIXES
from labelfix.train.mixers import Batch, LogicMixMixer, create_mixer, list_mixers

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Ctx:
    def __init__(self, labels, tmp=None):
        self.labels = np.asarray(labels, np.int8)
        self.trusted = np.zeros(self.labels.shape, bool)
        self.train_rows = np.arange(len(labels))
        self.rank, self.world_size, self.ema_model, self.out, self.sampler = 0, 1, None, tmp, None


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert set(list_mixers()) == set(MIXES)
    with pytest.raises(LabelfixError, match="mix 'cutmix': unknown; choose one of none, mixup, logicmix"):
        create_mixer("cutmix", TrainConfig(data="x", out="x"), Ctx(np.zeros((2, 2))))


def _direct_ce(m, target):
    """Cross-entropy of the rows of m against soft targets (rows summing to 1), by hand."""
    logp = m - torch.logsumexp(m, dim=1, keepdim=True)
    return -(target * logp).sum(1).mean()


def test_icm_single_label_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    b, c, lam = 6, 4, 0.3
    s = torch.randn(b, c, generator=g)
    y_a = torch.randint(0, c, (b,), generator=g)
    perm = torch.randperm(b, generator=g)
    y_b = y_a[perm]
    m = torch.zeros(b, b)
    for i in range(b):
        for j in range(b):
            m[i, j] = lam * s[i, y_a[j]] + (1 - lam) * s[i, y_b[j]]
    eye = torch.eye(b)
    expect = _direct_ce(m, eye) + _direct_ce(m.T, eye)
    assert icm_loss_single(s, y_a, y_b, lam) == pytest.approx(float(expect), rel=1e-5)
    assert icm_loss_single(s, y_a, y_b, lam, axes="class") == pytest.approx(float(_direct_ce(m, eye)), rel=1e-5)
    assert icm_loss_single(s, y_a, y_b, lam, axes="pair") == pytest.approx(float(_direct_ce(m.T, eye)), rel=1e-5)


def test_icm_multilabel_loss_matches_direct_computation_and_ignores_unknown_cells():
    g = torch.Generator().manual_seed(1)
    b, k, lam = 5, 6, 0.7
    s = torch.randn(b, k, generator=g)
    target = (torch.rand(b, k, generator=g) < 0.4).float()
    target[0] = 0   # an image without positives: its pair takes the partner's set only
    known = torch.rand(b, k, generator=g) < 0.8
    perm = torch.tensor([1, 2, 3, 4, 0])
    sets = normalised_positive_sets(target, known)
    got = icm_loss_multilabel(s, sets, sets[perm], lam)
    # direct: normalised known positive sets, mixed, cosine soft targets per row
    pos = (target * known).numpy()
    norm = [p / p.sum() if p.sum() else p for p in pos]
    mixed = []
    for i in range(b):
        a, bb = norm[i], norm[perm[i]]
        if a.sum() and bb.sum():
            mixed.append(lam * a + (1 - lam) * bb)
        else:
            mixed.append(a + bb)
    y = torch.tensor(np.array(mixed), dtype=torch.float32)
    m = s @ y.T
    cos = F.normalize(y, dim=1) @ F.normalize(y, dim=1).T
    expect = _direct_ce(m, cos / cos.sum(1, keepdim=True)) + _direct_ce(m.T, cos.T / cos.T.sum(1, keepdim=True))
    assert float(got) == pytest.approx(float(expect), rel=1e-5)
    # an unknown cell's value does not enter the loss
    flipped = torch.where(known, target, 1 - target)
    again = normalised_positive_sets(flipped, known)
    assert float(icm_loss_multilabel(s, again, again[perm], lam)) == pytest.approx(float(got), rel=1e-6)
    # one label per image on distinct classes: the paper's identity target
    y1 = torch.tensor([0, 1, 2, 3, 4])
    one = normalised_positive_sets(F.one_hot(y1, k).float(), torch.ones(b, k, dtype=torch.bool))
    ident = torch.arange(b)
    assert float(icm_loss_multilabel(s, one, one[ident], 1.0)) == pytest.approx(
        float(icm_loss_single(s, y1, y1, 1.0)), rel=1e-5)


def test_logicmix_mixed_samples_get_their_own_asl():
    """--loss asl: originals ASL(0, 4, 0.05), mixed ASL(4, 0, 0), weighted by sample counts."""
    labels = np.array([[1, 0, -1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.int8)
    cfg = TrainConfig(data="x", out="x", mix="logicmix", loss="asl", mix_prob=0.5)
    mixer = create_mixer("logicmix", cfg, Ctx(labels))
    assert isinstance(mixer, LogicMixMixer) and mixer.mixed_loss_name == "asl"
    batch = Batch(torch.randn(4, 3, 2, 2), torch.from_numpy(labels), torch.arange(4), torch.zeros(4, dtype=torch.long))
    mixed = mixer.mix(batch)
    m = mixed.extra["mixed"]
    assert 0 < int(m.sum()) < 4
    logits = torch.randn(4, 3)
    base = create_loss("asl")
    got = mixer.loss(logits, mixed, base)
    mixed_asl = create_loss("asl", gamma_pos=4.0, gamma_neg=0.0, margin=0.0)
    o = ~m
    expect = (mixed_asl(logits[m], mixed.target[m], mixed.known[m]) * m.sum()
              + base(logits[o], mixed.target[o], mixed.known[o]) * o.sum()) / 4
    assert float(got) == pytest.approx(float(expect), rel=1e-6)
    # with another loss the mixed samples use it too (the ASL pair is only official with ASL)
    assert create_mixer("logicmix", TrainConfig(data="x", out="x", mix="logicmix"), Ctx(labels)).mixed_loss is None


def test_curriculum_labels_unknown_cells_from_logits(tmp_path):
    (tmp_path / "stats").mkdir()
    labels = np.array([[1, -1, -1, -1], [0, -1, 1, -1]], np.int8)
    cfg = TrainConfig(data="x", out="x", mix="logicmix", curriculum_start=2)
    mixer = create_mixer("logicmix", cfg, Ctx(labels, tmp_path))
    logits = np.array([[-9, 5, -5, 1], [9, -9, -9, 3.9]], np.float16)
    assert mixer.on_epoch_end(0, logits, fresh=True) == {}   # epoch 1 < curriculum_start
    assert mixer.labels is None
    info = mixer.on_epoch_end(1, logits, fresh=True)
    np.testing.assert_array_equal(mixer.labels, [[1, 1, 0, -1], [0, 0, 1, -1]])   # known cells keep their label
    assert info == {"pseudo_positive": 1, "pseudo_negative": 2}
    again = create_mixer("logicmix", cfg, Ctx(labels, tmp_path))
    again.on_epoch_end(1, None, fresh=False)   # resume reads what the epoch wrote
    np.testing.assert_array_equal(again.labels, mixer.labels)


@pytest.mark.parametrize("mix,extra", [("icmixup", {}), ("logicmix", {"curriculum_start": 1, "ema": True}),
                                       ("mixup", {})])
def test_each_mixer_trains(demo_data, tmp_path, mix, extra):
    out = tmp_path / "run"
    train(TrainConfig(data=str(demo_data["train"]), out=str(out), backbone="test_resnet", img_size=32, epochs=2,
                      batch_size=16, workers=0, progress=False, lr=1e-3, mix=mix, randaugment=False, **extra),
          log=lambda s: None)
    logits = np.load(out / "stats" / "logits.npy")
    assert np.isfinite(logits).all()
    if mix == "logicmix":
        assert (out / "stats" / "curriculum_labels.npy").exists()


def test_icmixup_single_mode_resumes_and_refuses_multilabel_data(demo_data, tmp_path):
    """Single mode (the paper's loss on single-label data) records no weight, so a resume
    does not pass one back (before: refused, '--icm-weight: not used'); forced on
    multi-label data it is refused (before: argmax of the targets, silently)."""
    import json
    from pathlib import Path

    import yaml

    src = Path(demo_data["train"])
    data = json.loads(src.read_text())
    first = {}
    for a in data["annotations"]:
        first.setdefault(a["image_id"], a)   # one positive per image, every other cell negative
    data["annotations"] = list(first.values())
    assert len(first) == len(data["images"])
    single = tmp_path / "single.json"
    single.write_text(json.dumps(data))
    kw = dict(backbone="test_resnet", img_size=32, batch_size=16, workers=0, progress=False, lr=1e-3, mix="icmixup",
              randaugment=False, images=str(src.parent))
    out = tmp_path / "run"
    train(TrainConfig(data=str(single), out=str(out), epochs=1, **kw), log=lambda s: None)
    mixing = yaml.safe_load((out / "config.yaml").read_text())["dataset"]["mixing"]
    assert mixing["icm_mode"] == "single" and mixing["icm_weight"] is None
    train(TrainConfig(data=str(single), out=str(out), epochs=2, resume=True, **kw), log=lambda s: None)
    assert len(np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1, ndmin=2)) == 2
    # a run trained before the fix recorded icm_weight 1.0: it resumes too
    doc = yaml.safe_load((out / "config.yaml").read_text())
    doc["dataset"]["mixing"]["icm_weight"] = 1.0
    (out / "config.yaml").write_text(yaml.safe_dump(doc))
    train(TrainConfig(data=str(single), out=str(out), epochs=3, resume=True, **kw), log=lambda s: None)
    assert len(np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1, ndmin=2)) == 3
    with pytest.raises(LabelfixError, match=r"--icm-weight: not used by --mix icmixup in single mode"):
        train(TrainConfig(data=str(single), out=str(tmp_path / "w"), epochs=1, icm_weight=2.0, **kw),
              log=lambda s: None)
    with pytest.raises(LabelfixError, match=r"--icm-mode single: the paper's loss needs single-label data .* "
                                            r"training images are not"):
        train(TrainConfig(data=str(src), out=str(tmp_path / "multi"), epochs=1, icm_mode="single", **kw),
              log=lambda s: None)
