"""Mixing functions: truth tables, hand-computed sampler weights, reproducibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from labelfix.errors import LabelfixError
from labelfix.mixing import (balancemix_lambda, logic_or, logicmix, minority_sampling_weights, mix_pair, mixup,
                             sample_beta)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- LogicMix ---------------------------------------------------------------------------

# methods.md: any 1 -> 1; all 0 -> 0; otherwise unknown (0 OR ? = ?, ? OR ? = ?)
TWO_MEMBER_TABLE = {
    (1, 1): 1, (1, 0): 1, (1, -1): 1,
    (0, 1): 1, (0, 0): 0, (0, -1): -1,
    (-1, 1): 1, (-1, 0): -1, (-1, -1): -1,
}


def test_logic_or_two_member_truth_table():
    pairs = list(TWO_MEMBER_TABLE)
    labels = torch.tensor(pairs, dtype=torch.int8).T.reshape(2, 1, 9)
    out = logic_or(labels)
    assert out.dtype == torch.int8
    assert out[0].tolist() == [TWO_MEMBER_TABLE[p] for p in pairs]


def test_logic_or_three_member_table_is_a_fold_of_the_two_member_table():
    triples = list(itertools.product([1, 0, -1], repeat=3))
    labels = torch.tensor(triples, dtype=torch.int8).T.reshape(3, 1, 27)
    out = logic_or(labels)[0].tolist()
    for (a, b, c), got in zip(triples, out):
        assert got == TWO_MEMBER_TABLE[(TWO_MEMBER_TABLE[(a, b)], c)]
    with pytest.raises(LabelfixError):
        logic_or(torch.tensor([[[2]]], dtype=torch.int8))


def _members(x_mixed_row: torch.Tensor) -> tuple[list[int], float]:
    nz = torch.nonzero(x_mixed_row).flatten().tolist()
    return nz, float(x_mixed_row[nz[0]])


def test_logicmix_mixes_distinct_members_with_equal_weights():
    b, k = 64, 5
    x = torch.eye(b)  # image i is the one-hot e_i: the mix reveals its members
    labels = torch.randint(-1, 2, (b, k), generator=gen(0)).to(torch.int8)
    xm, lm = logicmix(x, labels, prob=1.0, generator=gen(1))
    counts = []
    for i in range(b):
        members, w = _members(xm[i])
        assert i in members and len(members) in (2, 3)
        assert torch.allclose(xm[i][members], torch.full((len(members),), 1.0 / len(members)))
        assert lm[i].tolist() == logic_or(labels[members].unsqueeze(1))[0].tolist()
        counts.append(len(members))
    assert {2, 3} <= set(counts)


def test_logicmix_probability_and_k_distribution():
    b = 4000
    x = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1).expand(b, 3, 2, 2).contiguous()
    labels = torch.zeros(b, 2, dtype=torch.int8)
    xm, lm = logicmix(x, labels, prob=0.5, k_choices=(2, 3), generator=gen(5))
    assert xm.shape == x.shape and xm.dtype == x.dtype and lm.shape == (b, 2)
    changed = (xm != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.45 < changed < 0.55  # seeded: deterministic, checks prob = 0.5 is applied
    xi = torch.eye(b // 4)
    xm2, _ = logicmix(xi, torch.zeros(b // 4, 1, dtype=torch.int8), prob=1.0, k_choices=(3,), generator=gen(6))
    assert bool(((xm2 > 0).sum(dim=1) == 3).all())


def test_logicmix_prob_zero_small_batches_and_validation():
    x = torch.randn(5, 3, 4, 4, generator=gen(0))
    labels = torch.randint(-1, 2, (5, 3), generator=gen(1)).to(torch.int8)
    xm, lm = logicmix(x, labels, prob=0.0, generator=gen(2))
    assert torch.equal(xm, x) and torch.equal(lm, labels)
    xm, lm = logicmix(x[:1], labels[:1], prob=1.0, generator=gen(2))  # nothing to mix with
    assert torch.equal(xm, x[:1]) and torch.equal(lm, labels[:1])
    xm, _ = logicmix(torch.eye(2), labels[:2], prob=1.0, k_choices=(3,), generator=gen(2))
    assert torch.allclose(xm, torch.full((2, 2), 0.5))  # K capped at the batch size
    with pytest.raises(LabelfixError):
        logicmix(x, labels, prob=1.5, generator=gen(0))
    with pytest.raises(LabelfixError):
        logicmix(x, labels, k_choices=(4,), generator=gen(0))


def test_logicmix_reproducible():
    x = torch.randn(16, 3, 8, 8, generator=gen(0))
    labels = torch.randint(-1, 2, (16, 4), generator=gen(1)).to(torch.int8)
    a = logicmix(x, labels, generator=gen(7))
    b = logicmix(x, labels, generator=gen(7))
    c = logicmix(x, labels, generator=gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- Mixup ------------------------------------------------------------------------------

def test_mixup_formula_and_known_rule():
    b = 6
    x = torch.eye(b, dtype=torch.float64)
    labels = torch.randint(-1, 2, (b, 3), generator=gen(3))
    target, known = (labels == 1).double(), labels != -1
    xm, tm, km = mixup(x, target, known, alpha=1.0, generator=gen(4))
    lams = [float(xm[i, i]) for i in range(b) if int((xm[i] != 0).sum()) == 2]
    assert lams and lams == pytest.approx([lams[0]] * len(lams))  # one l per batch
    lam = lams[0]
    for i in range(b):
        nz = torch.nonzero(xm[i]).flatten().tolist()
        j = i if len(nz) == 1 else [n for n in nz if n != i][0]
        assert torch.equal(km[i], known[i] & known[j])
        expected = lam * target[i] + (1 - lam) * target[j] if j != i else target[i]
        assert torch.allclose(tm[i], torch.where(km[i], expected, torch.zeros_like(expected)))
    again = mixup(x, target, known, alpha=1.0, generator=gen(4))
    assert all(torch.equal(p, q) for p, q in zip((xm, tm, km), again))
    with pytest.raises(LabelfixError):
        mixup(x, target, known, alpha=0.0, generator=gen(4))


def test_sample_beta_reproducible_and_in_range():
    a = sample_beta(4.0, 4.0, 1000, gen(0))
    assert torch.equal(a, sample_beta(4.0, 4.0, 1000, gen(0)))
    assert bool(((a > 0) & (a < 1)).all()) and abs(a.mean().item() - 0.5) < 0.02


# --- BalanceMix -------------------------------------------------------------------------

PROBS = np.array([[0.9, 0.2], [0.6, 0.7], [0.5, 0.1]])
GIVEN = np.array([[1, 0], [1, 1], [0, -1]], dtype=np.int8)


def test_minority_sampler_hand_example():
    # P(0) = (.9 + .6) / 2 = .75, A(0) = 1 - .5 = .5; P(1) = .7, A(1) = 1 - .2 = .8
    # Score = [.75 + .8, .75 + .7, .5]  (row 2, class 1 unknown: skipped)
    res = minority_sampling_weights(PROBS, GIVEN)
    assert res.class_pos == pytest.approx([0.75, 0.7])
    assert res.class_neg == pytest.approx([0.5, 0.8])
    assert res.scores == pytest.approx([1.55, 1.45, 0.5])
    inv = np.array([1 / 1.55, 1 / 1.45, 1 / 0.5])
    assert res.weights == pytest.approx(inv / inv.sum())
    assert res.weights.dtype == np.float64 and res.weights.sum() == pytest.approx(1.0)
    assert res.min_max_ratio == pytest.approx(0.5 / 1.55)
    assert res.summary()["max_over_uniform"] == pytest.approx(3 * (1 / 0.5) / inv.sum())
    chunked = minority_sampling_weights(PROBS.astype(np.float16), GIVEN, chunk_rows=1)
    assert chunked.weights == pytest.approx(
        minority_sampling_weights(PROBS.astype(np.float16).astype(np.float64), GIVEN).weights)

    mean = minority_sampling_weights(PROBS, GIVEN, score_reduction="mean")
    assert mean.scores == pytest.approx([1.55 / 2, 1.45 / 2, 0.5])


def test_minority_sampler_guards():
    probs = np.array([[0.0, 0.3], [0.2, 0.4], [0.7, 0.1]])
    given = np.array([[1, 0], [0, 0], [-1, -1]], dtype=np.int8)
    res = minority_sampling_weights(probs, given, eps=1e-3)
    assert np.isnan(res.class_pos[1]) and np.isnan(res.scores[2])  # class 1 has no positive
    assert res.class_pos[0] == pytest.approx(1e-3)  # P(0) = 0 floored at eps
    assert np.all(np.isfinite(res.weights)) and res.weights.sum() == pytest.approx(1.0)
    # row without known cells gets the mean weight of the others
    assert res.weights[2] == pytest.approx(res.weights[:2].mean())
    all_unknown = minority_sampling_weights(probs, np.full((3, 2), -1, dtype=np.int8))
    assert all_unknown.weights == pytest.approx([1 / 3] * 3)
    with pytest.raises(LabelfixError):
        minority_sampling_weights(np.array([[np.nan, 0.1]]), np.array([[1, 0]], dtype=np.int8))
    with pytest.raises(LabelfixError):
        minority_sampling_weights(PROBS, GIVEN[:2])


def test_balancemix_lambda():
    lam = balancemix_lambda(5000, gen(0))
    assert lam.shape == (5000,) and bool(((lam >= 0.5) & (lam <= 1.0)).all())
    assert torch.equal(lam, balancemix_lambda(5000, gen(0)))
    assert not torch.equal(lam, balancemix_lambda(5000, gen(1)))
    # E[max(l, 1 - l)] for Beta(4, 4) is 0.5 + E|l - 0.5| ~ 0.636
    assert 0.62 < lam.mean().item() < 0.65


def test_mix_pair():
    x_r, x_m = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    y_r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y_m = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    lam = torch.tensor([0.75, 0.5])
    x, y = mix_pair(x_r, x_m, y_r, y_m, lam)
    assert torch.allclose(x[0], torch.full((1, 2, 2), 0.75)) and torch.allclose(x[1], torch.full((1, 2, 2), 0.5))
    assert torch.allclose(y, torch.tensor([[0.75, 0.25], [0.5, 1.0]]))
    known_m = torch.tensor([[True, False], [False, True]])
    _, y = mix_pair(x_r, x_m, y_r, y_m, lam, known_m=known_m)
    assert torch.allclose(y, torch.tensor([[0.75, 0.0], [0.0, 1.0]]))
    with pytest.raises(LabelfixError):
        mix_pair(x_r, x_m, y_r, y_m, lam[:1])
