"""Label states, issue scores and find_label_issues."""

import numpy as np
import pandas as pd
import pytest

from labelfix.cleaning import (AMBIGUOUS, CLEAN, ESTIMATED, RELABELED, assign_states, default_delta,
                               find_label_issues, list_scorers, get_scorer, write_cell_arrays)
from labelfix.cleaning.api import CORRECTION_COLUMNS
from labelfix.cleaning.scores import bce_losses
from labelfix.errors import LabelfixError


def test_assign_states_hand_computed():
    given = np.array([[1, 0, -1, 1, 0, 1]], np.int8)
    p = np.array([[0.9, 0.2, np.nan, 0.3, 0.1, np.nan]], np.float32)
    c = np.array([[0.1, 0.99, 0.9, 0.5, 0.01, 0.5]], np.float32)
    state, target, weight = assign_states(given, p, c, delta=0.975)
    assert state.tolist() == [[CLEAN, RELABELED, ESTIMATED, AMBIGUOUS, RELABELED, CLEAN]]
    assert target.tolist() == [[1, 1, -1, 1, 0, 1]]
    np.testing.assert_allclose(weight, [[1, 1, 0, 0.3, 1, 1]])
    state2, target2, _ = assign_states(given, p, None)
    assert state2.tolist() == [[CLEAN, AMBIGUOUS, ESTIMATED, AMBIGUOUS, AMBIGUOUS, CLEAN]]
    assert (target2 == given).all()
    # chunked = whole
    rng = np.random.default_rng(0)
    g = rng.integers(-1, 2, (53, 7)).astype(np.int8)
    pp, cc = rng.random((53, 7)).astype(np.float32), rng.random((53, 7)).astype(np.float32)
    a = assign_states(g, pp, cc, delta=0.55)
    b = assign_states(g, pp, cc, delta=0.55, chunk_rows=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(LabelfixError):
        assign_states(g, pp, cc, delta=0.3)


def test_default_delta():
    multi = np.array([[1, 1, 0], [0, 1, 0]], np.int8)
    single = np.array([[1, -1, -1], [-1, -1, 1], [-1, -1, -1]], np.int8)
    assert default_delta(multi) == 0.975
    assert default_delta(single, chunk_rows=1) == 0.55
    # positive-only labels after a review (two positives, no negative): still the setting
    assert default_delta(np.array([[1, 1, -1, -1, -1]], np.int8)) == 0.55
    assert default_delta(np.array([[1, 1, 0, 0, -1, -1, -1, -1, -1]], np.int8)) == 0.975   # real negatives


def test_scorers_hand_computed():
    given = np.array([[1, 0, -1]], np.int8)
    probs = np.array([[0.2, 0.3, 0.8]], np.float32)
    p_clean = np.array([[0.4, 1.0, np.nan]], np.float32)
    tv = np.array([[np.nan, 0.9, 0.6]], np.float32)
    losses = bce_losses(probs, given)
    np.testing.assert_allclose(losses, [[-np.log(0.2), -np.log(0.7), -np.log(0.2)]], rtol=1e-6)
    kw = dict(probs=probs, p_clean=p_clean, two_view=tv, losses=losses)
    np.testing.assert_allclose(get_scorer("gmm")(given, **kw), [[0.6, 0.0, 0.6]], atol=1e-6)
    np.testing.assert_allclose(get_scorer("disagreement")(given, **kw), [[0.8, 0.3, 0.6]], atol=1e-6)
    np.testing.assert_allclose(get_scorer("two_view")(given, **kw), [[0.8, 0.9, 0.6]], atol=1e-6)
    with pytest.raises(LabelfixError, match="two_view: needs two_view"):   # no silent fallback
        get_scorer("two_view")(given, **{**kw, "two_view": None})
    np.testing.assert_allclose(get_scorer("loss")(given, **kw), [[0.8, 0.3, 0.6]], atol=1e-6)
    np.testing.assert_allclose(get_scorer("combined")(given, **kw), [[0.7, 0.45, 0.6]], atol=1e-6)
    est = np.array([[0.0, 0.0, 0.95]], np.float32)
    # ROLE-style estimates decide suggestions, not scores: the unknown cell keeps the model's two-view value
    assert get_scorer("combined")(given, **kw, estimates=est)[0, 2] == pytest.approx(0.6)
    # logits form equals the probability form
    logits = np.array([[-3.0, 0.5, 2.0]], np.float32)
    np.testing.assert_allclose(bce_losses(logits, given, logits=True),
                               bce_losses(1 / (1 + np.exp(-logits)), given), rtol=1e-5)
    # evidence: the probability mixed 3:1 with the neighbours' vote where there is one
    nb = np.array([[0.0, 1.0, np.nan]], np.float32)
    np.testing.assert_allclose(get_scorer("evidence")(given, **kw, neighbours=nb), [[0.85, 0.475, 0.8]], atol=1e-6)
    np.testing.assert_allclose(get_scorer("evidence")(given, **kw), [[0.8, 0.3, 0.8]], atol=1e-6)
    # evidence_gmm: the known cells' evidence times 1 - p_clean / 2 (the unknown cell keeps q)
    np.testing.assert_allclose(get_scorer("evidence_gmm")(given, **kw, neighbours=nb),
                               [[0.85 * 0.8, 0.475 * 0.5, 0.8]], atol=1e-6)
    np.testing.assert_allclose(get_scorer("evidence_gmm")(given, **kw), [[0.8 * 0.8, 0.3 * 0.5, 0.8]], atol=1e-6)
    with pytest.raises(LabelfixError, match="evidence_gmm: needs p_clean"):
        get_scorer("evidence_gmm")(given, **{**kw, "p_clean": None})
    # posterior: Bayes' rule under the class's noise rates (rho0, rho1) = (0.1, 0.3)
    rates = np.array([[0.1, 0.3], [0.1, 0.3], [0.1, 0.3]])
    q = np.array([0.15, 0.475, 0.8])   # the evidence estimate (3:1 with the neighbours' vote)
    want = [0.1 * (1 - q[0]) / (0.1 * (1 - q[0]) + 0.7 * q[0]),   # given positive
            0.3 * q[1] / (0.3 * q[1] + 0.9 * (1 - q[1])),          # given negative
            q[2]]                                                  # unknown: P(positive)
    np.testing.assert_allclose(get_scorer("posterior")(given, **kw, neighbours=nb, noise_rates=rates), [want],
                               atol=1e-6)
    with pytest.raises(LabelfixError, match="posterior: needs noise_rates"):
        get_scorer("posterior")(given, **kw)
    assert set(list_scorers()) == {"gmm", "disagreement", "two_view", "loss", "combined", "evidence",
                                  "evidence_gmm", "posterior"}
    with pytest.raises(LabelfixError):
        get_scorer("nope")


def _noisy(seed=0, n=1500, k=4):
    rng = np.random.default_rng(seed)
    true = (rng.random((n, k)) < 0.3).astype(np.int8)
    probs = np.where(true == 1, rng.beta(20, 2, (n, k)), rng.beta(2, 20, (n, k))).astype(np.float32)
    given = true.copy()
    flip = rng.random((n, k)) < 0.05
    given[flip] = 1 - given[flip]
    given[rng.random((n, k)) < 0.2] = -1
    return true, given, probs


def test_relabel_threshold_moves_cells_between_states_not_in_or_out_of_the_suggestions():
    """docs/cleaning.md and clean --help: delta decides re-labeled vs ambiguous; an
    ambiguous cell is suggested by c > 0.5, so the suggestions do not depend on it."""
    true, given, probs = _noisy()
    rng = np.random.default_rng(3)
    probs = np.clip(probs + rng.normal(0, 0.2, probs.shape), 0.01, 0.99)   # many cells between the thresholds
    strict, loose = (find_label_issues(given, probs, relabel_threshold=d) for d in (0.975, 0.55))
    np.testing.assert_array_equal(strict.suggested, loose.suggested)
    pd.testing.assert_frame_equal(strict.corrections.drop(columns="state"), loose.corrections.drop(columns="state"))
    assert (strict.state == AMBIGUOUS).sum() > (loose.state == AMBIGUOUS).sum()
    assert (strict.state == RELABELED).sum() < (loose.state == RELABELED).sum()


def test_find_label_issues_synthetic_noise():
    true, given, probs = _noisy()
    iss = find_label_issues(given, probs, classes=["a", "b", "c", "d"])
    wrong = (given != true) & (given != -1)
    # clearly separated noisy cells get low p_clean, clean ones high
    assert np.nanmax(iss.p_clean[wrong]) < 0.5
    assert np.mean(iss.p_clean[(given == true)] > 0.5) > 0.99
    assert np.isnan(iss.p_clean[given == -1]).all()
    c = iss.corrections
    assert list(c.columns) == CORRECTION_COLUMNS[:2] + ["class"] + CORRECTION_COLUMNS[2:]
    assert (np.diff(c.score.to_numpy()) <= 0).all()
    known = c[c.given != "unknown"]
    hit = wrong[known.image_index, known.class_index]
    assert hit.sum() == wrong.sum() and hit.mean() > 0.97    # every flip found, few false alarms
    assert ((known.given == "1") == (known.action == "remove")).all()
    assert (known.suggested == 1 - known.given.astype(str).astype(int)).all()
    unk = c[c.given == "unknown"]
    assert (unk.action == "add").all() and (unk.state == "estimated").all()
    assert iss.estimate_threshold == 0.5 and (unk.probability > iss.estimate_threshold).all()
    assert (true[unk.image_index, unk.class_index] == 1).mean() > 0.9
    assert iss.state[given == -1].tolist() == [ESTIMATED] * int((given == -1).sum())
    top = find_label_issues(given, probs, max_suggestions=5)
    pd.testing.assert_frame_equal(top.corrections, c.drop(columns="class").head(5))


def test_cells_the_model_did_not_score_are_never_suggested():
    """A NaN row of probabilities (an image the model did not score) and, in a run's own
    logits, a NaN cell keep their given label: no suggestion, score 0, p_clean NaN, and
    ``settings`` counts them; the other cells are scored as without them."""
    true, given, probs = _noisy()
    wrong_rows = np.flatnonzero(((given != true) & (given != -1)).any(1))
    row, other = wrong_rows[0], wrong_rows[1]
    base = find_label_issues(given, probs)
    assert row in set(base.corrections.image_index) and base.settings["unscored_images"] == 0
    holed = probs.copy()
    holed[row] = np.nan
    iss = find_label_issues(given, holed)
    assert row not in set(iss.corrections.image_index)
    assert iss.settings["unscored_images"] == 1 and iss.settings["unranked_cells"] == 0
    assert (iss.score[row] == 0).all() and np.isnan(iss.p_clean[row]).all()
    assert (iss.suggested[row] == given[row]).all() and (iss.state[row][given[row] != -1] == CLEAN).all()
    # a single NaN cell is refused in a user's probabilities, skipped in a run's own logits
    cell = (other, int(np.flatnonzero((given[other] != true[other]) & (given[other] != -1))[0]))
    logits = np.log(holed / (1 - holed))
    logits[cell] = np.nan
    with pytest.raises(LabelfixError, match="NaN"):
        find_label_issues(given, 1 / (1 + np.exp(-logits)))
    from labelfix.cleaning.api import LazyProbs

    iss = find_label_issues(given, LazyProbs(logits))
    assert iss.settings["unscored_images"] == 2
    assert not ((iss.corrections.image_index == cell[0]) & (iss.corrections.class_index == cell[1])).any()
    assert other in set(iss.corrections.image_index) or (given[other] != true[other]).sum() == 1


def test_an_infinite_logit_against_its_label_is_the_surest_error():
    """scipy.special.logit(1.0) is +inf: a cell given 0 there (and given 1 at -inf) is the
    most confident error, suggested as with the probability itself (its loss was NaN,
    0 * inf, and a NaN loss reads as "clean")."""
    from labelfix.numeric import bce_logits

    assert bce_logits(np.array([np.inf, -np.inf, np.inf, -np.inf, np.nan], np.float32),
                      np.array([0, 1, 1, 0, 1])).tolist()[:4] == [np.inf, np.inf, 0.0, 0.0]
    true, given, probs = _noisy()
    given, probs = given.copy(), probs.copy()
    given[0, 0], probs[0, 0] = 0, 1.0
    given[1, 1], probs[1, 1] = 1, 0.0
    with np.errstate(divide="ignore"):
        logits = np.log(probs) - np.log1p(-probs)
    iss = find_label_issues(given, logits, probs_are_logits=True)
    for cell in ((0, 0), (1, 1)):
        assert np.isinf(logits[cell]) and iss.suggested[cell] == 1 - given[cell] and iss.score[cell] == 1.0
        assert ((iss.corrections.image_index == cell[0]) & (iss.corrections.class_index == cell[1])).any()


def test_find_label_issues_logits_memmap_out_dir(tmp_path):
    true, given, probs = _noisy(seed=1, n=300, k=3)
    logits = np.log(probs) - np.log1p(-probs)
    np.save(tmp_path / "g.npy", given)
    np.save(tmp_path / "z.npy", logits.astype(np.float32))
    g = np.load(tmp_path / "g.npy", mmap_mode="r")
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    a = find_label_issues(g, z, probs_are_logits=True, out_dir=tmp_path / "cells", chunk_rows=17)
    b = find_label_issues(given, probs)
    assert isinstance(a.score, np.memmap) and sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "p_clean.npy", "score.npy", "state.npy", "suggested.npy"]
    np.testing.assert_allclose(a.score, b.score, atol=1e-5)
    np.testing.assert_array_equal(a.state, b.state)
    assert len(a.corrections) == len(b.corrections)
    paths = write_cell_arrays(tmp_path / "copy", b, chunk_rows=7)
    np.testing.assert_array_equal(np.load(paths["suggested"]), b.suggested)


def test_losses_fit_the_gmms_and_dynamics_feed_the_loss_score():
    true, given, probs = _noisy(seed=2, n=300, k=3)
    rng = np.random.default_rng(0)
    fit = bce_losses(probs, given)
    history = (fit + rng.random(fit.shape)).astype(np.float32)   # e.g. the mean over epochs
    both = find_label_issues(given, probs, losses=fit, dynamics=history, scorer="loss", chunk_rows=41)
    alone = find_label_issues(given, probs, losses=fit, scorer="loss")
    np.testing.assert_array_equal(both.p_clean, alone.p_clean)        # the GMMs fit ``losses``
    known = given != -1
    np.testing.assert_allclose(both.score[known], -np.expm1(-history[known]), atol=1e-6)
    np.testing.assert_allclose(alone.score[known], -np.expm1(-fit[known]), atol=1e-6)
    with pytest.raises(LabelfixError, match="dynamics: shape"):
        find_label_issues(given, probs, dynamics=history[:, :2])


def test_degenerate_inputs_no_crash():
    rng = np.random.default_rng(5)
    n, k = 200, 4
    given = (rng.random((n, k)) < 0.3).astype(np.int8)
    given[:, 0] = 0          # zero positives
    given[:, 1] = -1         # all unknown
    probs = rng.random((n, k)).astype(np.float32)
    losses = bce_losses(probs, given)
    losses[:3, 2] = np.nan
    iss = find_label_issues(given, probs, losses=losses)
    assert iss.gmms.reason[0, 1] == "empty" and (iss.gmms.reason[1] == "empty").all()
    assert np.isnan(iss.p_clean[:, 1]).all() and (iss.state[:, 1] == ESTIMATED).all()
    assert (iss.p_clean[:3, 2] == 1).all() and iss.gmms.n_nonfinite[2].sum() == 3
    assert np.isfinite(iss.score).all() and ((iss.score >= 0) & (iss.score <= 1)).all()
    empty = find_label_issues(np.full((5, 2), -1, np.int8), np.full((5, 2), 0.5, np.float32))
    assert len(empty.corrections) == 0 and list(empty.corrections.columns) == CORRECTION_COLUMNS
    # the noise-rate rule on the same degenerate classes (and a class with positives only)
    given[:, 3] = np.where(given[:, 3] == 0, -1, given[:, 3])
    probs[5] = np.nan   # an image the model did not score
    post = find_label_issues(given, probs, scorer="posterior")
    assert np.isfinite(post.score).all() and ((post.score >= 0) & (post.score <= 1)).all()
    assert np.isfinite(post.settings["noise_rates"]).all()


def test_bad_input():
    given = np.zeros((4, 2), np.int8)
    with pytest.raises(LabelfixError, match="probs"):
        find_label_issues(given, np.zeros((4, 3)))
    with pytest.raises(LabelfixError, match="classes"):
        find_label_issues(given, np.zeros((4, 2)), classes=["a"])
    with pytest.raises(LabelfixError, match=r"^classes: 'ab': expected a list of 2 names, got one string"):
        find_label_issues(given, np.zeros((4, 2)), classes="ab")
    with pytest.raises(LabelfixError, match=r"^classes: column 1: duplicate class name 'a' \(also column 0\)"):
        find_label_issues(given, np.zeros((4, 2)), classes=["a", "a"])
    with pytest.raises(LabelfixError, match="relabel_threshold"):
        find_label_issues(given, np.zeros((4, 2)), relabel_threshold=0.2)
    with pytest.raises(LabelfixError, match=r"^labels: rows of different lengths: cleanlab's multi-label list"):
        find_label_issues(labels=[[0], [0, 1], [], [1]], pred_probs=np.zeros((4, 2)))


def test_bad_gmm_options_and_out_dir_are_one_line_before_any_pass(tmp_path):
    import inspect

    from labelfix.cleaning.api import GMM_OPTIONS
    from labelfix.cleaning.gmm import fit_label_gmms

    params = set(inspect.signature(fit_label_gmms).parameters) - {"losses", "given", "chunk_rows", "device"}
    assert GMM_OPTIONS == params   # every option of the fit, and nothing the caller sets itself
    true, given, probs = _noisy(n=100)
    with pytest.raises(LabelfixError, match=r"^gmm_options: unknown option\(s\) max_iters; it takes bins, em, max_iter"):
        find_label_issues(given, probs, gmm_options={"max_iters": 5})
    with pytest.raises(LabelfixError, match=r"^gmm_options: expected a dict"):
        find_label_issues(given, probs, gmm_options=[("em", "exact")])
    assert find_label_issues(given, probs, gmm_options={"max_iter": 5}).corrections is not None
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LabelfixError, match=r"^out_dir: .*afile: is a file"):
        find_label_issues(given, probs, out_dir=tmp_path / "afile")
    find_label_issues(given, probs, out_dir=tmp_path / "new" / "cells")   # made, as a user would expect
    assert (tmp_path / "new" / "cells" / "score.npy").exists()


def test_torch_tensors_and_pandas_tables_are_read_as_the_arrays_they_hold():
    """A timm user's outputs as torch tensors (float16 / bfloat16, with grad) give the numpy
    result; DataFrames are paired by their labels: the same rows in another order, or
    other columns, are refused with one line (they were paired by position, silently)."""
    import torch

    true, given, probs = _noisy(n=200)
    ref = find_label_issues(given, probs).corrections
    for p in (torch.from_numpy(probs), torch.from_numpy(probs).double().requires_grad_()):
        pd.testing.assert_frame_equal(find_label_issues(torch.from_numpy(given).long(), p).corrections, ref)
    pd.testing.assert_frame_equal(find_label_issues(given, probs, device=torch.device("cpu")).corrections, ref)
    for dtype in (torch.float16, torch.bfloat16):   # rounded probabilities: the same cells, near the same order
        low = find_label_issues(given, torch.from_numpy(probs).to(dtype)).corrections
        assert len(set(zip(low.image_index, low.class_index)) ^ set(zip(ref.image_index, ref.class_index))) <= 2
    g = pd.DataFrame(given, index=np.arange(200) + 1000, columns=list("abcd"))
    p = pd.DataFrame(probs, index=g.index, columns=g.columns)
    pd.testing.assert_frame_equal(find_label_issues(g, p).corrections, ref)
    with pytest.raises(LabelfixError, match=r"^probs: its row index is not given's .*probs.reindex\(given.index\)"):
        find_label_issues(g, p.sample(frac=1.0, random_state=0))
    with pytest.raises(LabelfixError, match=r"^losses: its columns are not given's"):
        find_label_issues(g, p, losses=p[list("badc")])
    pd.testing.assert_frame_equal(find_label_issues(g, probs).corrections, ref)   # an array: by position
    # pandas' default 0..n-1 axis names nothing: positional (a model's output table)
    pd.testing.assert_frame_equal(find_label_issues(g, pd.DataFrame(probs, index=g.index)).corrections, ref)


def test_single_positive_data_never_suggests_removing_a_given_positive():
    """Single-positive labels: every given positive is taken as verified (the probabilities
    here make half of them look wrong); removals only when the user asks for them."""
    rng = np.random.default_rng(3)
    n, k = 400, 5
    given = np.full((n, k), -1, np.int8)
    given[np.arange(n), rng.integers(0, k, n)] = 1
    probs = rng.uniform(0.01, 0.99, (n, k)).astype(np.float32)
    res = find_label_issues(given, probs)
    assert not (res.corrections["action"] == "remove").any() and len(res.corrections) > 0
    assert (np.asarray(res.suggested)[given == 1] == 1).all()
    asked = find_label_issues(given, probs, single_positive_removals=True)
    assert (asked.corrections["action"] == "remove").any()
    # after a review round: some added positives and rejected suggestions; still positive-only
    reviewed = given.copy()
    reviewed[:40, 0] = np.where(given[:40, 0] == 1, 1, np.where(np.arange(40) % 2 == 0, 1, 0))
    assert ((reviewed == 1).sum(1) > 1).any() and (reviewed == 0).any()
    res = find_label_issues(reviewed, probs)
    assert not (res.corrections["action"] == "remove").any() and len(res.corrections) > 0


def test_trusted_cells_are_the_verified_ones_plus_the_positives_of_positive_only_labels():
    from labelfix.cleaning.states import trusted_cells

    verified = np.zeros((4, 3), dtype=bool)
    verified[0, 2] = True
    single = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, -1], [-1, -1, 1]], dtype=np.int8)
    out = trusted_cells(single, verified)
    assert out.tolist() == ((single == 1) | verified).tolist()
    assert not verified[1, 1]   # the input is not modified
    reviewed = single.copy()
    reviewed[0, 1], reviewed[2, 0] = 1, 0   # a review added a positive and rejected a suggestion
    assert trusted_cells(reviewed, verified).tolist() == ((reviewed == 1) | verified).tolist()
    multi = single.copy()
    multi[2] = [0, 0, 1]
    multi[1] = [0, 1, 0]   # as many known negatives as positives: labels with real negatives
    assert trusted_cells(multi, verified).tolist() == verified.tolist()
    dense = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.int8)   # nothing unknown
    assert trusted_cells(dense, verified).tolist() == verified.tolist()
    # the rule looks at the given rows only (cross-fitting: the training rows)
    assert trusted_cells(multi, verified, rows=np.array([0, 3]))[2].tolist() == [False, False, True]


def test_confident_joint_matches_cleanlab_per_class():
    cl_count = pytest.importorskip("cleanlab.count")
    from labelfix.cleaning.noise_rates import confident_joint, given_counts, noise_rates

    true, given, probs = _noisy(seed=3, n=401, k=5)
    probs[7] = np.nan   # an image the model did not score: not counted
    joint = confident_joint(given, probs, chunk_rows=37)
    for k in range(given.shape[1]):
        m = (given[:, k] != -1) & np.isfinite(probs[:, k])
        q = probs[m, k].astype(np.float64)
        want = cl_count.compute_confident_joint(given[m, k], np.stack([1 - q, q], 1), calibrate=False)
        np.testing.assert_array_equal(joint[k], want)
    # rows calibrated to the given-label counts (JAIR 2021 Eq. 2), then P(y~ | y*) with the pseudo-count
    counts = given_counts(given, chunk_rows=50)
    assert counts.tolist() == [[int((given[:, k] == 0).sum()), int((given[:, k] == 1).sum())]
                               for k in range(given.shape[1])]
    j = np.array([[[90, 10], [5, 45]]])
    c = j + np.array([[[0, 0.5], [0.5, 0]]])
    cal = c / c.sum(2, keepdims=True) * np.array([[200, 100]])[:, :, None]
    rho0 = cal[0, 1, 0] / (cal[0, 0, 0] + cal[0, 1, 0])
    rho1 = cal[0, 0, 1] / (cal[0, 0, 1] + cal[0, 1, 1])
    np.testing.assert_allclose(noise_rates(j, np.array([[200, 100]])), [[rho0, rho1]])
    # the pooled share of wrong known labels: the calibrated joint's off-diagonal mass
    from labelfix.cleaning.noise_rates import known_error_rate

    assert known_error_rate(j, np.array([[200, 100]])) == pytest.approx((cal[0, 0, 1] + cal[0, 1, 0]) / 300)
    assert known_error_rate(j, np.zeros((1, 2))) == 0.0


def test_evidence_ranks_unknown_cells_by_the_known_labels_error_rate():
    """Known and unknown cells rank against each other by their error posterior under one
    pooled error rate r of the known labels: where every known label is right (missing
    labels only), a missing positive the model is fairly sure of outranks a known label
    the model doubts as much; the known cells keep their order, the unknown cells theirs,
    and fully labelled data score exactly |y - q|."""
    from labelfix.cleaning.scores import unknown_on_known_scale

    q = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
    r = 0.05
    odds = q[1:4] / (1 - q[1:4]) * (1 - r) / r
    np.testing.assert_allclose(unknown_on_known_scale(q, r)[1:4], odds / (1 + odds), rtol=1e-5)
    assert unknown_on_known_scale(q, r)[[0, 4]].tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(unknown_on_known_scale(q, None), q)
    np.testing.assert_allclose(unknown_on_known_scale(q, 0.7), q, rtol=1e-6)   # r capped at 0.5: q as it is

    rng = np.random.default_rng(1)
    n, k = 3000, 3
    true = (rng.random((n, k)) < 0.3).astype(np.int8)
    # a model that errs: known labels it doubts compete with missing positives it believes
    probs = np.where(true == 1, rng.beta(4, 2, (n, k)), rng.beta(2, 4, (n, k))).astype(np.float32)
    given = true.copy()
    given[(true == 1) & (rng.random((n, k)) < 0.5)] = -1   # half the positives missing
    given[(true == 0) & (rng.random((n, k)) < 0.3)] = -1   # and some negatives unknown
    iss = find_label_issues(given, probs, chunk_rows=701)
    r = iss.settings["known_error_rate"]
    assert 0 < r < 0.15   # the confident joint's estimate (every known label is right here)
    known = given != -1
    d = np.abs((given == 1) - probs)
    np.testing.assert_allclose(iss.score[known], d[known], atol=1e-6)   # known cells: |y - q|
    # (settings hold r rounded to 6 decimals)
    np.testing.assert_allclose(iss.score[~known], unknown_on_known_scale(probs, r)[~known], rtol=1e-3)
    # the errors are the missing positives: the top 500 hold more of them than with the
    # unknown cells' q taken as it is
    error = (~known & (true == 1)).ravel()
    plain = np.where(known, d, probs)
    top, top_plain = (np.argsort(-a, axis=None, kind="stable")[:500] for a in (iss.score, plain))
    assert error[top].mean() > 0.9 and error[top].mean() > error[top_plain].mean() + 0.05
    # fully labelled: no rate is estimated, the score is the disagreement
    full = find_label_issues(true, probs)
    assert full.settings["known_error_rate"] is None
    np.testing.assert_allclose(full.score, np.abs(true - probs), atol=1e-6)


def test_posterior_score_ranks_a_doubtful_cell_of_a_noisy_class_first():
    """Two classes, the same model doubt on one given positive each: the class whose labels
    carry many confidently wrong positives ranks its doubtful cell above the clean class's."""
    rng = np.random.default_rng(0)
    n = 2000
    true = (rng.random((n, 2)) < 0.4).astype(np.int8)
    probs = np.where(true == 1, rng.beta(12, 2, (n, 2)), rng.beta(2, 12, (n, 2))).astype(np.float32)
    given = true.copy()
    noisy = (true[:, 0] == 0) & (rng.random(n) < 0.25)   # class 0: many false positives
    given[noisy, 0] = 1
    given[:2] = 1
    probs[:2] = 0.3   # rows 0 and 1: the same doubtful given positive in both classes
    iss = find_label_issues(given, probs, scorer="posterior", chunk_rows=333)
    rho = np.array(iss.settings["noise_rates"])
    assert rho[0, 0] > 3 * rho[1, 0]   # P(y~=1 | y*=0) far higher in class 0
    assert iss.score[0, 0] > iss.score[0, 1]
    plain = find_label_issues(given, probs, scorer="evidence")
    assert plain.score[0, 0] == pytest.approx(plain.score[0, 1])


def test_features_give_the_neighbour_evidence_that_probabilities_lack():
    # images whose embeddings cluster by their true labels; the model's probabilities say
    # nothing (0.5 +- noise): only the neighbours' labels can tell the flipped cells
    from sklearn.metrics import average_precision_score

    from labelfix.cleaning.neighbours import neighbour_estimates

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=(300, 3)).astype(np.int8)
    features = truth * 4.0 + rng.normal(0, 0.3, size=truth.shape) + 1.0
    flipped = rng.random(truth.shape) < 0.1
    given = np.where(flipped, 1 - truth, truth).astype(np.int8)
    probs = 0.5 + rng.normal(0, 0.01, size=truth.shape)
    without = find_label_issues(given, probs)
    with_features = find_label_issues(given, probs, features=features)
    ap = [average_precision_score(flipped.ravel(), np.asarray(r.score).ravel()) for r in (without, with_features)]
    assert ap[0] < 0.3 and ap[1] > 0.7
    # the same as passing the vote computed by the library function
    vote = neighbour_estimates(features.astype(np.float32), given).estimate
    np.testing.assert_array_equal(np.asarray(find_label_issues(given, probs, neighbours=vote).score),
                                  np.asarray(with_features.score))
    import torch

    np.testing.assert_array_equal(np.asarray(find_label_issues(given, probs, features=torch.tensor(features)).score),
                                  np.asarray(with_features.score))
    with pytest.raises(LabelfixError, match="give the neighbour evidence once"):
        find_label_issues(given, probs, features=features, neighbours=vote)
    with pytest.raises(LabelfixError, match=r"features: shape \(299, 3\): expected \(N, D\) embeddings with N = 300"):
        find_label_issues(given, probs, features=features[1:])
    with pytest.raises(LabelfixError, match="features: the 'gmm' score reads no neighbour evidence"):
        find_label_issues(given, probs, features=features, scorer="gmm")
    single = np.full_like(given, -1)
    single[np.arange(len(given)), 0] = 1
    with pytest.raises(LabelfixError, match="features: the labels are positive-only"):
        find_label_issues(single, probs, features=features)
    # DataFrames are paired by row labels, as every other input; bad options before the search
    frame = pd.DataFrame(given, index=np.arange(100, 400))
    with pytest.raises(LabelfixError, match=r"features: its row index is not given's"):
        find_label_issues(frame, probs, features=pd.DataFrame(features, index=np.arange(399, 99, -1)))
    with pytest.raises(LabelfixError, match="chunk_rows"):
        find_label_issues(given, probs, features=features, chunk_rows=2.5)
    for row, value, message in ((3, np.nan, "features: row 3: NaN in 1 of 3 values"),
                                (5, 1e300, "features: row 5: a value beyond float32's range")):
        bad = features.copy()
        bad[row, 0] = value
        with pytest.raises(LabelfixError, match=message):
            find_label_issues(given, probs, features=bad)
    with pytest.raises(LabelfixError, match="features: every row is NaN"):
        find_label_issues(given, probs, features=np.full_like(features, np.nan))
    no_embedding = features.copy()
    no_embedding[[4, 9]] = np.nan   # images without an embedding: no vote of their own, none for others
    find_label_issues(given, probs, features=no_embedding)
    bad = features.copy()
    bad[7, 1] = np.inf
    with pytest.raises(LabelfixError, match="features: row 7: an infinite value"):
        find_label_issues(given, probs, features=bad)
