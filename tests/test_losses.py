"""Partial-label losses: hand-computed values, gradient routing, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfix.errors import LabelfixError
from labelfix.losses import create_loss, estimate_kappa, kappa_from_held_out, list_losses, split_labels
from labelfix.losses.asl import AsymmetricLoss
from labelfix.losses.large_loss import LargeLossLoss
from labelfix.losses.spl import ExpectedPositiveLoss, RoleLoss


def bce(x: float, t: float) -> float:
    """BCE of one logit x against target t, by hand: log(1 + e^x) - t x."""
    return math.log1p(math.exp(x)) - t * x


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# logits, labels used by several tests: 2 images x 3 classes
LOGITS = [[0.0, 2.0, -1.0], [-1.0, 0.5, 3.0]]
LABELS = [[1, -1, 0], [0, 1, -1]]


def batch(requires_grad: bool = False):
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=requires_grad)
    target, known = split_labels(torch.tensor(LABELS, dtype=torch.int8))
    return logits, target.double(), known


def test_split_labels():
    target, known = split_labels(torch.tensor([[1, 0, -1]], dtype=torch.int8))
    assert target.tolist() == [[1.0, 0.0, 0.0]] and target.dtype == torch.float32
    assert known.tolist() == [[True, True, False]]
    with pytest.raises(LabelfixError):
        split_labels(torch.tensor([[2, 0]]))
    with pytest.raises(LabelfixError):
        split_labels(torch.tensor([[1.0, 0.0]]))


def test_masked_bce_value_and_unknown_grad():
    logits, target, known = batch(requires_grad=True)
    loss = create_loss("bce")(logits, target, known)
    expected = (bce(0, 1) + bce(-1, 0) + bce(-1, 0) + bce(0.5, 1)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0
    assert logits.grad[0, 0] == pytest.approx((sig(0) - 1) / 4)


def test_masked_bce_soft_target_weight_and_empty():
    logits = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    target = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    known = torch.tensor([[True, True]])
    weight = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    loss = create_loss("bce")(logits, target, known, weight=weight)
    assert loss.item() == pytest.approx((2.0 * bce(1, 0.3) + 0.5 * bce(-2, 0)) / 2, rel=1e-12)
    none_known = torch.zeros_like(known)
    x = logits.clone().requires_grad_()
    empty = create_loss("bce")(x, target, none_known)
    empty.backward()
    assert empty.item() == 0.0 and torch.all(x.grad == 0)


def test_an_an_ls_wan_values():
    logits, target, known = batch()
    an = create_loss("an")(logits, target, known).item()
    cells = [(0, 1), (2, 0), (-1, 0), (-1, 0), (0.5, 1), (3, 0)]
    assert an == pytest.approx(sum(bce(x, t) for x, t in cells) / 6, rel=1e-12)

    an_ls = create_loss("an-ls")(logits, target, known).item()
    smooth = [(x, 0.9 if t == 1 else 0.1) for x, t in cells]
    assert an_ls == pytest.approx(sum(bce(x, t) for x, t in smooth) / 6, rel=1e-12)

    wan = create_loss("wan")(logits, target, known).item()
    # unknown cells (0, 1) logit 2 and (1, 2) logit 3 are divided by K - 1 = 2
    w_cells = [bce(0, 1), bce(2, 0) / 2, bce(-1, 0), bce(-1, 0), bce(0.5, 1), bce(3, 0) / 2]
    assert wan == pytest.approx(sum(w_cells) / 6, rel=1e-12)


def test_unknown_ignored_means_label_value_irrelevant():
    logits, target, known = batch()
    other = target.clone()
    other[~known] = 1.0  # whatever the target says on unknown cells
    for name in ("bce", "an", "an-ls", "wan", "asl"):
        loss = create_loss(name)
        assert loss(logits, target, known).item() == pytest.approx(loss(logits, other, known).item())


def test_input_checks():
    logits, target, known = batch()
    with pytest.raises(LabelfixError):
        create_loss("bce")(logits, target[:, :2], known)
    with pytest.raises(LabelfixError):
        create_loss("an")(logits, target, known.long())


# --- large loss -------------------------------------------------------------------------

def test_ll_first_epoch_is_an_and_rate_schedule():
    logits, target, known = batch()
    for name in ("ll-r", "ll-ct"):
        ll = create_loss(name)
        ll.set_epoch(0)
        assert ll(logits, target, known).item() == pytest.approx(create_loss("an")(logits, target, known).item())
        assert ll.last_selected.sum() == 0
    ll = LargeLossLoss("reject", delta_rel=0.1)
    ll.set_epoch(3)
    assert ll.rejection_rate == pytest.approx(0.003)
    assert ll.num_selected(1000) == 3  # not 4 from float noise
    ll.set_epoch(10**6)
    assert ll.rejection_rate == 1.0
    with pytest.raises(LabelfixError):
        ll.set_epoch(-1)


def test_ll_r_rejects_exactly_top_fraction_of_unknown():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(-1, 2, (8, 5), generator=gen).to(torch.int8)
    target, known = split_labels(labels)
    target = target.double()
    logits[known] = 20.0  # known cells with huge losses must never be selected
    target[known] = 0.0
    n_unknown = int((~known).sum())
    ll = LargeLossLoss("reject", delta_rel=25.0)  # 25 % per epoch
    ll.set_epoch(1)
    x = logits.clone().requires_grad_()
    loss = ll(x, target, known)
    k = math.ceil(0.25 * n_unknown)
    sel = ll.last_selected
    assert int(sel.sum()) == k
    assert not bool((sel & known).any())
    an_cell = F.binary_cross_entropy_with_logits(logits, torch.where(known, target, 0.0), reduction="none")
    unknown_losses = an_cell[~known]
    threshold = torch.sort(unknown_losses, descending=True).values[k - 1]
    assert bool((an_cell[sel] >= threshold).all())
    assert bool((an_cell[~known & ~sel] <= threshold).all())
    expected = an_cell.masked_fill(sel, 0.0).sum() / an_cell.numel()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert bool((x.grad[sel] == 0).all())


def test_ll_ties_select_exactly_k_and_full_rate():
    logits = torch.zeros(2, 4, dtype=torch.float64)  # every unknown loss ties
    labels = torch.tensor([[1, -1, -1, -1], [-1, -1, -1, 0]], dtype=torch.int8)
    target, known = split_labels(labels)
    ll = LargeLossLoss("reject", delta_rel=50.0)
    ll.set_epoch(1)
    ll(logits, target.double(), known)
    assert int(ll.last_selected.sum()) == 3  # ceil(0.5 * 6)
    ll.set_epoch(2)  # rate 1: every unknown cell rejected, known cells kept
    loss = ll(logits, target.double(), known)
    assert int(ll.last_selected.sum()) == 6
    assert loss.item() == pytest.approx((bce(0, 1) + bce(0, 0)) / 8)


def test_ll_ct_corrects_to_positive():
    logits, target, known = batch()
    ll = LargeLossLoss("correct", delta_rel=50.0)
    ll.set_epoch(1)  # 2 unknown cells, rate 0.5 -> the larger one: logit 3 (loss bce(3, 0))
    loss = ll(logits, target, known).item()
    cells = [bce(0, 1), bce(2, 0), bce(-1, 0), bce(-1, 0), bce(0.5, 1), bce(3, 1)]
    assert loss == pytest.approx(sum(cells) / 6, rel=1e-12)
    assert ll.last_selected.tolist() == [[False, False, False], [False, False, True]]


# --- ASL --------------------------------------------------------------------------------

def asl_reference(x, t, known, gp, gn, m):
    """Straightforward ASL (Ben-Baruch et al. Eq. 4-7) on probabilities, float64."""
    p = torch.sigmoid(x)
    pm = torch.clamp(p - m, min=0)
    pos = (1 - p).detach() ** gp * torch.log(p)
    neg = pm.detach() ** gn * torch.log(1 - pm)
    cell = -(t * pos + (1 - t) * neg)
    return cell[known].sum() / known.sum()


@pytest.mark.parametrize("gp,gn,m", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (0.0, 0.0, 0.2)])
def test_asl_matches_reference_value_and_grad(gp, gn, m):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(-1, 2, (6, 4), generator=gen).to(torch.int8)
    target, known = split_labels(labels)
    target = target.double()
    x1 = x0.clone().requires_grad_()
    x2 = x0.clone().requires_grad_()
    ours = AsymmetricLoss(gp, gn, m)(x1, target, known)
    ref = asl_reference(x2, target, known, gp, gn, m)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    ours.backward()
    ref.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)
    assert torch.is_grad_enabled()


def test_asl_hand_value_and_saturated_positive_gradient():
    # positive logit 0 (p = .5), negative logit 0 (p_m = .45): gp = 0, gn = 4, m = .05
    x = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    known = torch.tensor([[True, True]])
    loss = create_loss("asl")(x, t, known)
    assert loss.item() == pytest.approx((math.log(2) - 0.45**4 * math.log(0.55)) / 2, rel=1e-12)
    # a positive predicted at p ~ e^-40 keeps its gradient (-(1 - p) / 1 ~ -1)
    x = torch.tensor([[-40.0]], dtype=torch.float64, requires_grad=True)
    create_loss("asl")(x, torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool)).backward()
    assert x.grad.item() == pytest.approx(-1.0)


def test_asl_leaves_grad_mode_alone():
    x = torch.zeros(1, 2, requires_grad=True)
    t, known = torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        loss = AsymmetricLoss()(x, t, known)
        assert not torch.is_grad_enabled() and not loss.requires_grad
    assert torch.is_grad_enabled()


# --- EPR / kappa ------------------------------------------------------------------------

def test_epr_value():
    logits, target, known = batch()
    kappa = 1.5
    loss = ExpectedPositiveLoss(kappa)(logits, target, known).item()
    pos = -math.log(sig(0)) - math.log(sig(0.5))
    sums = [sig(0) + sig(2) + sig(-1), sig(-1) + sig(0.5) + sig(3)]
    reg = ((sums[0] + sums[1]) / 2 - kappa) ** 2 / 9
    assert loss == pytest.approx(pos / 6 + reg, rel=1e-12)
    with_neg = ExpectedPositiveLoss(kappa, observed_negatives=True)(logits, target, known).item()
    extra = -2 * math.log(1 - sig(-1))
    assert with_neg == pytest.approx((pos + extra) / 6 + reg, rel=1e-12)


def test_estimate_kappa():
    full = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.int8)
    assert estimate_kappa(full) == pytest.approx(6 / 4)  # 2 + 1 + 3 + 0 positives
    partial = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1], [0, -1, 0]], dtype=np.int8)
    # class rates 1/3, 1/2, 1/3
    assert estimate_kappa(partial, chunk_rows=1) == pytest.approx(1 / 3 + 1 / 2 + 1 / 3)
    single_positive = np.array([[1, -1], [-1, 1]], dtype=np.int8)
    with pytest.raises(LabelfixError, match="pass kappa"):
        estimate_kappa(single_positive)
    with pytest.raises(LabelfixError):
        estimate_kappa(np.array([[0, -1], [0, -1]], dtype=np.int8))


def test_kappa_from_held_out_is_elkan_notos_estimate():
    """A held-out model of 'given or not' outputs g = c P(y = 1): with every positive given
    at the same rate c (Elkan & Noto's assumption) kappa is the mean positive count; with
    one positive given per image (c = 1 / m) it is the harmonic mean of m."""
    rng = np.random.default_rng(0)
    n, k = 4000, 8
    truth = rng.random((n, k)) < 0.3
    given = np.where(truth & (rng.random((n, k)) < 0.4), 1, -1).astype(np.int8)
    logit = lambda g: np.log(np.clip(g, 1e-9, 1 - 1e-9)) - np.log1p(-np.clip(g, 1e-9, 1 - 1e-9))
    assert kappa_from_held_out(logit(np.where(truth, 0.4, 0.0)), given) == \
        pytest.approx(truth.sum(1).mean(), rel=0.01)
    m = np.maximum(truth.sum(1), 1)
    truth[np.arange(n), rng.integers(0, k, n)] |= truth.sum(1) == 0
    single = np.full((n, k), -1, dtype=np.int8)
    single[np.arange(n), [rng.choice(np.flatnonzero(t)) for t in truth]] = 1
    g = np.where(truth, 1.0 / m[:, None], 0.0)
    assert kappa_from_held_out(logit(g), single) == pytest.approx(1 / np.mean(1 / m), rel=1e-6)
    # AN-LS's smoothed outputs eps + (1 - 2 eps) g are unsmoothed first
    eps = 0.1
    assert kappa_from_held_out(logit(eps + (1 - 2 * eps) * g), single, label_smoothing=eps) == \
        pytest.approx(1 / np.mean(1 / m), rel=1e-4)
    # NaN rows (not held out) are skipped; chunks add up; the result is at most K
    held = logit(g)
    held[::2] = np.nan
    assert kappa_from_held_out(held, single, np.arange(n), chunk_rows=7) == \
        pytest.approx(kappa_from_held_out(held[1::2], single[1::2]))
    assert kappa_from_held_out(np.full((2, 3), -30.0), np.array([[1, -1, -1], [-1, 1, -1]], np.int8)) == 3.0
    with pytest.raises(LabelfixError, match="no held-out row with a given positive"):
        kappa_from_held_out(np.full((2, 2), np.nan), np.array([[1, -1], [-1, 1]], np.int8))

# --- ROLE -------------------------------------------------------------------------------

def role_fixture():
    given = np.array([[1, -1, 0], [0, 1, -1], [-1, -1, 1], [1, 0, 0]], dtype=np.int8)
    return given, RoleLoss(4, 3, given, kappa=1.0, seed=3)


def test_role_init_and_accessors():
    given, role = role_fixture()
    g = role.estimates()
    assert g.shape == (4, 3) and not g.requires_grad
    assert torch.allclose(g[torch.from_numpy(given == 1)], torch.tensor(0.995), atol=1e-6)
    assert torch.allclose(g[torch.from_numpy(given == 0)], torch.tensor(0.005), atol=1e-6)
    unk = g[torch.from_numpy(given == -1)]
    assert bool(((unk > 0.4) & (unk < 0.6)).all())
    assert role.estimator_parameters() == [role.table]
    again = RoleLoss(4, 3, given, kappa=1.0, seed=3)
    assert torch.equal(again.table, role.table)
    with pytest.raises(LabelfixError):
        RoleLoss(5, 3, given, kappa=1.0)


def test_role_table_warm_start_from_estimates():
    """labelfix's warm start: an unknown cell with an estimate starts at its logit (clipped
    to [WARM_CLIP, 1 - WARM_CLIP]); known cells keep the paper's start, unknown cells without
    an estimate (NaN) the uniform one, drawn from the same random stream as without
    estimates; a mis-shaped table of estimates is refused."""
    from labelfix.losses.spl import WARM_CLIP, init_role_table

    given, cold = role_fixture()
    est = np.array([[0.2, 0.9, 0.5], [0.3, 0.4, 0.999], [np.nan, 0.0, 0.7], [0.5, 0.5, 0.5]])
    warm = RoleLoss(4, 3, given, kappa=1.0, seed=3, init_estimates=est).estimates().numpy()
    unk = given == -1
    expected = np.clip(est, WARM_CLIP, 1 - WARM_CLIP)
    use = unk & np.isfinite(est)
    np.testing.assert_allclose(warm[use], expected[use], rtol=1e-5)
    np.testing.assert_allclose(warm[unk & ~use], cold.estimates().numpy()[unk & ~use])
    np.testing.assert_allclose(warm[~unk], cold.estimates().numpy()[~unk])
    with pytest.raises(LabelfixError, match="estimates shape"):
        init_role_table(given, estimates=np.zeros((4, 2)))


def test_estimates_from_held_out_undo_the_given_rate():
    """An assumed-negative model's g = c P(y = 1) becomes P(y = 1) = g / c, with c the mean g
    over the given positives (AN-LS unsmoothed first); another model's probability is kept;
    NaN rows stay NaN and chunks change nothing."""
    from labelfix.losses import estimates_from_held_out

    rng = np.random.default_rng(1)
    n, k = 60, 4
    given = np.where(rng.random((n, k)) < 0.3, 1, -1).astype(np.int8)
    logits = rng.normal(0, 2, (n, k))
    logits[3] = np.nan
    g = 1 / (1 + np.exp(-logits))
    ok = ~np.isnan(logits).any(1)
    c = g[ok][given[ok] == 1].mean()
    want = np.clip(g / c, 0, 1)
    np.testing.assert_allclose(estimates_from_held_out(logits, given, chunk_rows=7), want, rtol=1e-5)
    eps = 0.1
    smoothed = np.log(eps + (1 - 2 * eps) * g) - np.log(1 - eps - (1 - 2 * eps) * g)
    np.testing.assert_allclose(estimates_from_held_out(smoothed, given, label_smoothing=eps), want, rtol=1e-4)
    rows = np.arange(0, n, 2)
    c_rows = g[rows][ok[rows]][given[rows][ok[rows]] == 1].mean()
    np.testing.assert_allclose(estimates_from_held_out(logits, given, rows), np.clip(g / c_rows, 0, 1), rtol=1e-5)
    np.testing.assert_allclose(estimates_from_held_out(logits, given, assumed_negative=False), g, rtol=1e-5)
    assert np.isnan(estimates_from_held_out(logits, given)[3]).all()


def test_role_estimates_are_refused_for_other_losses(tmp_path):
    from labelfix.train.config import TrainConfig
    from labelfix.train.optim import build_loss

    given, _ = role_fixture()
    cfg = TrainConfig(data="x", out=str(tmp_path), loss="an")
    with pytest.raises(LabelfixError, match="warm-start ROLE's table only"):
        build_loss(cfg, given, role_estimates=np.full(given.shape, 0.5))


def test_role_value_and_stop_gradients():
    given, role = role_fixture()
    index = torch.tensor([2, 0])
    logits, target, known = batch()
    target, known = split_labels(torch.from_numpy(given[index.numpy()]))
    target = target.double()
    x = logits.clone().float().requires_grad_()
    loss = role(x, target.float(), known, index=index)

    # hand formula in float64 with explicit stop-gradients
    G = role.table.detach().double()[index].clone().requires_grad_()
    f_logit = logits.clone().requires_grad_()
    f, g = torch.sigmoid(f_logit), torch.sigmoid(G)
    pos = lambda q: torch.where(known, -target * torch.log(q), torch.zeros_like(q))  # noqa: E731
    bce_t = lambda q, t: -(t * torch.log(q) + (1 - t) * torch.log(1 - q))  # noqa: E731
    reg = lambda q: (q.sum(1).mean() - 1.0) ** 2 / 9  # noqa: E731
    cell = 0.5 * (pos(f) + pos(g)) + 0.5 * (bce_t(f, g.detach()) + bce_t(g, f.detach()))
    ref = cell.sum() / 6 + 0.5 * (reg(f) + reg(g))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)

    loss.backward()
    ref.backward()
    assert torch.allclose(x.grad.double(), f_logit.grad, rtol=1e-4, atol=1e-7)
    table_grad = role.table.grad
    assert torch.allclose(table_grad[index].double(), G.grad, rtol=1e-4, atol=1e-7)
    assert bool((table_grad[[1, 3]] == 0).all())  # rows not in the batch

    # f's gradient: the cross term reaches f only through BCE(f; sg(g)) -> d/dx = (f - g)/2/BK
    f = torch.sigmoid(f_logit)
    f_only = 0.5 * pos(f).sum() / 6 + 0.5 * reg(f)
    fx = torch.autograd.grad(f_only, f_logit)[0]
    with torch.no_grad():
        cross_grad = 0.5 * (torch.sigmoid(logits) - torch.sigmoid(G)) / 6
    assert torch.allclose(x.grad.double(), fx + cross_grad, rtol=1e-4, atol=1e-7)


def test_role_needs_index():
    _, role = role_fixture()
    logits, target, known = batch()
    with pytest.raises(LabelfixError, match="index"):
        role(logits.float(), target.float(), known)


# --- registry ---------------------------------------------------------------------------

def test_registry():
    assert list_losses() == ["bce", "an", "an-ls", "wan", "asl", "epr", "role", "ll-r", "ll-ct"]
    with pytest.raises(LabelfixError, match="unknown"):
        create_loss("focal")
    with pytest.raises(LabelfixError, match="fixed"):
        create_loss("an-ls", label_smoothing=0.2)
    with pytest.raises(LabelfixError, match="not an option"):
        create_loss("bce", gamma=2)
    with pytest.raises(LabelfixError):
        create_loss("epr")  # kappa is required
    assert create_loss("ll-ct").mode == "correct" and create_loss("LL-R").mode == "reject"


def test_every_loss_backpropagates():
    given = np.array([[1, -1, 0], [0, 1, -1]], dtype=np.int8)
    kwargs = {"epr": {"kappa": 1.0}, "role": {"num_samples": 2, "num_classes": 3, "given_labels": given,
                                               "kappa": 1.0}}
    target, known = split_labels(torch.from_numpy(given))
    for name in list_losses():
        loss_fn = create_loss(name, **kwargs.get(name, {}))
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(200)
        x = torch.randn(2, 3, requires_grad=True)
        loss = loss_fn(x, target, known, index=torch.arange(2))
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
