# BalanceMix (Song, Kim & Lee, AAAI 2024), "Label-wise management" used as a label
# cleaner: label-wise loss GMMs -> p_clean, re-labeling by delta, per-cell issue scores
# and the list of suggested corrections (labelfix; cleanlab-style entry point).
"""``find_label_issues``: unknown-aware label issues of a multi-label matrix."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from labelfix.cleaning import gmm as _gmm
from labelfix.cleaning import scores as _scores
from labelfix.cleaning.noise_rates import confident_joint, given_counts, known_error_rate, noise_rates
from labelfix.cleaning.states import (AMBIGUOUS, CLEAN, ESTIMATED, RELABELED, STATE_NAMES, assign_states_block,
                                      delta_for)
from labelfix.errors import LabelfixError, describe_os_error
from labelfix.io.arrays import load_npy
from labelfix.io.atomic import atomic_memmap, staged
from labelfix.validation import (as_cell_array, as_features, as_given, check_aligned, check_class_names, check_device,
                                 check_number, check_probabilities)
from labelfix.labels import STATE_NAMES as GIVEN_NAMES
from labelfix.labels import UNK, positive_only
from labelfix.numeric import sigmoid

#: unknown cells are suggested positive above this estimate (docs/cleaning.md)
DEFAULT_ESTIMATE_THRESHOLD = 0.5
#: the options of :func:`labelfix.cleaning.gmm.fit_label_gmms` that ``gmm_options`` may set
GMM_OPTIONS = frozenset({"max_iter", "tol", "reg_covar", "em", "bins", "min_cells"})
CELL_ARRAYS = {"p_clean": np.float32, "score": np.float32, "state": np.int8, "suggested": np.int8}
CORRECTION_COLUMNS = ["image_index", "class_index", "given", "suggested", "action", "state", "score",
                      "p_clean", "probability"]


@dataclass
class LabelIssues:
    """Result of :func:`find_label_issues`. Per-cell arrays are (N, K) (memmaps when
    written to a directory).

    Attributes:
        p_clean: float32, GMM posterior that the given label is clean (NaN on unknown cells
            and on cells the model did not score).
        score: float32 in [0, 1], issue score (higher = given label more likely wrong, or
            unknown cell more likely positive); 0 on cells the model did not score.
        state: int8, CLEAN 0 / RELABELED 1 / AMBIGUOUS 2 / ESTIMATED 3.
        suggested: int8, suggested label: the given one for clean cells, the re-labeled
            value, the rounded model estimate for ambiguous cells; for unknown cells 1 / 0
            when the estimate passes the estimate threshold / its complement, else -1.
        corrections: DataFrame, one row per suggested change, sorted by score (desc);
            columns ``CORRECTION_COLUMNS``.
        gmms: the fitted label-wise mixtures (group shape (K, 2)).
        delta: re-labeling threshold used; estimate_threshold: threshold for unknown cells.
        settings: the options used, and two counts of cells left out of the ranking:
            ``unscored_images`` (images with a NaN probability, cells the model did not
            score, e.g. an image that failed to decode in training: their cells keep the
            given label, score 0 and p_clean NaN; known ones get state clean, unknown ones
            stay estimated with suggested -1) and ``unranked_cells`` (scored
            cells whose score rule got no value, e.g. a NaN ``dynamics`` for ``loss``:
            score 0, so they rank last); ``unscored_classes``, the class indices given
            as ``unscored_classes``.
    """

    p_clean: np.ndarray
    score: np.ndarray
    state: np.ndarray
    suggested: np.ndarray
    corrections: pd.DataFrame
    gmms: _gmm.GMMFit
    delta: float
    estimate_threshold: float
    settings: dict = field(default_factory=dict)


class LazyProbs:
    """Row-sliceable view applying sigmoid to (memmapped) logits chunk by chunk."""

    def __init__(self, logits):
        self.base, self.shape = logits, tuple(logits.shape)

    def __getitem__(self, rows):
        return sigmoid(self.base[rows])


class LazyBCE:
    """Row-sliceable BCE losses of probs (or logits) against the given labels (unknown ->
    against 0), computed chunk by chunk."""

    def __init__(self, probs, given, logits: bool):
        self.probs, self.given, self.logits, self.shape = probs, given, logits, tuple(given.shape)

    def __getitem__(self, rows):
        return _scores.bce_losses(self.probs[rows], self.given[rows], logits=self.logits)


class EvidenceRows:
    """Row-sliceable ``evidence`` estimate q (model probability mixed with the neighbours'
    vote, :func:`labelfix.cleaning.scores.evidence_estimate`), computed chunk by chunk."""

    def __init__(self, probs, neighbours):
        self.probs, self.neighbours, self.shape = probs, neighbours, tuple(probs.shape)

    def __getitem__(self, rows):
        nb = None if self.neighbours is None else np.asarray(self.neighbours[rows], dtype=np.float32)
        return _scores.evidence_estimate(np.asarray(self.probs[rows], dtype=np.float32), nb)


def _check_shape(name, arr, shape):
    if arr is not None and tuple(arr.shape) != tuple(shape):
        raise LabelfixError(f"{name}: shape {tuple(arr.shape)}: does not match given {tuple(shape)}")


def _checked_inputs(given, probs, losses, dynamics, two_view, estimates, neighbours, verified, labels,
                    pred_probs, probs_are_logits):
    """Aliases resolved, containers converted, values checked (labelfix.validation)."""
    if labels is not None:
        if given is not None:
            raise LabelfixError("give the labels once: given or labels (cleanlab's name), not both")
        if isinstance(labels, (list, tuple)) and len({len(r) if isinstance(r, (list, tuple)) else -1
                                                      for r in labels}) > 1:
            raise LabelfixError("labels: rows of different lengths: cleanlab's multi-label list of class-index "
                                "lists is not read here; pass the (N, K) 1 / 0 / -1 matrix (for lists of "
                                "positives: cleanlab.internal.multilabel_utils.int2onehot(labels, K))")
        given = labels
    if pred_probs is not None:
        if probs is not None:
            raise LabelfixError("give the probabilities once: probs or pred_probs (cleanlab's name), not both")
        probs = pred_probs
    if given is None:
        raise LabelfixError("given (labels): the (N, K) label matrix is required")
    if probs is None:
        raise LabelfixError("probs (pred_probs): the (N, K) probability matrix is required")
    check_aligned(given, dict(probs=probs, losses=losses, dynamics=dynamics, two_view=two_view,
                              estimates=estimates, neighbours=neighbours, verified=verified))
    given = as_given(given, "given")
    shape = tuple(given.shape)
    probs = as_cell_array(probs, "probs", shape)
    if not isinstance(probs, LazyProbs):   # LazyProbs: labelfix's own logits (run statistics)
        check_probabilities(probs, "probs", logits=bool(probs_are_logits))
    losses = as_cell_array(losses, "losses", shape)
    dynamics = as_cell_array(dynamics, "dynamics", shape)
    out = []
    for name, arr in (("two_view", two_view), ("estimates", estimates), ("neighbours", neighbours)):
        arr = as_cell_array(arr, name, shape)
        if arr is not None and not isinstance(arr, LazyProbs):   # NaN = not computed, allowed
            check_probabilities(arr, name, nan_rows_ok=False, logits=False, nan_ok=True)
        out.append(arr)
    verified = as_cell_array(verified, "verified", shape)
    if verified is not None and np.dtype(verified.dtype) != np.bool_:
        raise LabelfixError(f"verified: dtype {np.dtype(verified.dtype)}: must be a bool (N, K) matrix")
    return (given, probs, losses, dynamics, *out, verified)


def _checked_options(k: int, classes, gmm_options, out_dir) -> tuple[list | None, Path | None]:
    """``classes`` (K unique names, not one string), ``gmm_options`` (a dict of
    :data:`GMM_OPTIONS`) and ``out_dir`` (made with its parents; not a file), checked
    before any pass over the data. Returns ``(classes as a list, out_dir as a Path)``."""
    if classes is not None:
        if isinstance(classes, str):   # list("abc") would be three names
            raise LabelfixError(f"classes: {classes!r}: expected a list of {k} names, got one string")
        classes = list(classes)
        if len(classes) != k:
            raise LabelfixError(f"classes: {len(classes)} names: given has {k} columns")
        check_class_names([str(c) for c in classes], "classes", record=lambda i: f"column {i}")
    if gmm_options is not None:
        unknown = sorted(map(str, set(gmm_options) - GMM_OPTIONS)) if isinstance(gmm_options, dict) else None
        if unknown is None or unknown:
            what = "expected a dict" if unknown is None else "unknown option(s) " + ", ".join(unknown)
            raise LabelfixError(f"gmm_options: {what}; it takes {', '.join(sorted(GMM_OPTIONS))} "
                                f"(labelfix.cleaning.gmm.fit_label_gmms)")
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise LabelfixError(f"out_dir: {out_dir}: is a file, expected a folder for the per-cell arrays")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LabelfixError(f"out_dir: {out_dir}: cannot be created: {describe_os_error(err)}") from None
    return classes, out_dir


def _vote_from_features(features, given, neighbours, scorer: str, single: bool) -> np.ndarray:
    """float32 (N, K) the neighbours' label vote from ``features`` (``find_label_issues``'s
    argument), refused where it would be unused or misleading: beside ``neighbours``, with a
    scorer that reads no neighbour evidence, or on positive-only labels (whose known
    neighbour labels are positive by selection; ``single``: ``positive_only(given)``;
    ``labelfix clean`` skips the vote there too, docs/cleaning.md)."""
    from labelfix.cleaning.neighbours import neighbour_estimates

    if neighbours is not None:
        raise LabelfixError("give the neighbour evidence once: features (labelfix computes the vote) or "
                            "neighbours (the vote), not both")
    if not _scores.get_scorer(scorer).uses_neighbours:
        users = [name for name in _scores.list_scorers() if _scores.get_scorer(name).uses_neighbours]
        raise LabelfixError(f"features: the {scorer!r} score reads no neighbour evidence; leave features out, or "
                            f"use a score that does ({', '.join(users)})")
    if single:
        raise LabelfixError("features: the labels are positive-only (most cells unknown, fewer known negatives "
                            "than positives): the neighbours' known labels would be positive by selection, a vote "
                            "on the labelling rather than the image; leave features out")
    return neighbour_estimates(as_features(features, "features", len(given)), given).estimate


def _suggest_block(given, state, target, probs, two_view, estimates, est_thr):
    g = np.asarray(given)
    c = _scores._finite_or(two_view, probs)
    sug = target.copy()
    amb = state == AMBIGUOUS
    sug[amb] = (c[amb] > 0.5).astype(np.int8)
    unk = g == UNK
    q = _scores.unknown_estimate(probs, two_view, estimates)
    with np.errstate(invalid="ignore"):
        sug[unk & (q > est_thr)] = 1
        sug[unk & (q < 1.0 - est_thr)] = 0
    sug[unk & ~((q > est_thr) | (q < 1.0 - est_thr))] = UNK
    return sug


def find_label_issues(
    given=None,
    probs=None,
    losses=None,
    two_view=None,
    estimates=None,
    neighbours=None,
    verified=None,
    *,
    dynamics=None,
    features=None,
    clean_threshold: float = 0.5,
    relabel_threshold: float | None = None,
    estimate_threshold: float | None = None,
    max_suggestions: int | None = None,
    classes: Sequence[str] | None = None,
    scorer: str = _scores.DEFAULT_SCORER,
    probs_are_logits: bool = False,
    gmm_options: dict | None = None,
    monotone: bool = True,
    out_dir: str | Path | None = None,
    chunk_rows: int | None = None,
    device: str = "cpu",
    single_positive_removals: bool = False,
    unscored_classes: Sequence[int] | None = None,
    labels=None,
    pred_probs=None,
) -> LabelIssues:
    """Find wrong and missing labels in a partially labeled multi-label matrix.

    Unlike ``cleanlab.multilabel_classification.filter.find_label_issues`` this handles
    unknown cells (-1): they are not fitted, never called wrong, and are suggested as
    additions when the model estimate is confident.

    Method (docs/cleaning.md): per class k and given label z in {1, 0} a 2-component GMM
    on the min-max normalised per-cell losses (BalanceMix label-wise management,
    DivideMix settings); p_clean = posterior of the lower-loss component. Known cells
    with p_clean > ``clean_threshold`` are clean; the others are re-labeled when the
    two-view probability c (``two_view`` where finite, else ``probs``) is > delta (-> 1)
    or < 1 - delta (-> 0), else ambiguous.

    Args:
        given: int8 (N, K) given labels, 1 / 0 / -1 (unknown). May be a memmap.
        probs: float (N, K) predicted probabilities (or logits with
            ``probs_are_logits=True``), ideally out-of-sample.
        losses: float (N, K) per-cell losses for the GMMs (a cross-fitted run: round
            1's held-out BCE; else e.g. the mean BCE over epochs); None -> BCE of
            ``probs`` against ``given`` (unknown -> against 0).
        dynamics: float (N, K) per-cell loss averaged over the training epochs (training
            dynamics), the input of the ``loss`` scorer; None -> ``losses``.
        two_view: float (N, K) BalanceMix two-view mean probability, NaN where not
            computed; None -> ``probs`` is used for re-labeling.
        estimates: float (N, K) estimated P(positive) for unknown cells (e.g. ROLE's
            label estimator); None -> two_view / probs.
        neighbours: float (N, K) the neighbours' label vote (share of known neighbour
            labels that are positive, NaN where none; ``labelfix.cleaning.neighbours``),
            used by the ``evidence``, ``evidence_gmm`` and ``posterior`` scorers; None ->
            no neighbour evidence.
        features: float (N, D) image embeddings (any model's, e.g. its penultimate
            layer), paired with ``given`` by row; labelfix computes the neighbours' label
            vote from them (``neighbour_estimates``, the k = 50 nearest by cosine, an image
            never its own neighbour, every row voting for every other: unlike ``labelfix
            clean``, which searches a held-out image's neighbours among its fold model's
            training images): the alternative to passing ``neighbours``. Refused with a
            score that reads no neighbour evidence and on positive-only labels; a
            DataFrame is paired with a DataFrame ``given`` by its row index. A row NaN
            throughout is an image without an embedding (no vote from or for it).
        verified: bool (N, K) cells a person verified in an earlier review: clean
            (p_clean 1), score 0, never suggested.
        single_positive_removals: in the single-positive setting (positive-only labels,
            :func:`labelfix.labels.positive_only`, also after a review added positives)
            the given positives are the only labels and are taken as verified: none is
            suggested for removal unless this is True.
        unscored_classes: class indices whose cells get no score (0), no p_clean and no
            suggestion, as cells the model did not score: classes the model never learned.
            ``labelfix clean`` passes the classes without a known label (every cell
            unknown), whose probabilities from a model trained on these labels are its
            untrained output (about 0.5) and would fill the top of the list.
        clean_threshold: p_clean above which a known cell is clean (0.5).
        relabel_threshold: delta; None -> :func:`default_delta` (0.55 single-positive,
            else 0.975).
        estimate_threshold: an unknown cell is suggested positive when its estimate
            exceeds it; None -> 0.5 (the estimate's own decision threshold).
        max_suggestions: keep only the top-scoring corrections.
        classes: class names; adds a ``class`` column to ``corrections``.
        scorer: issue score rule (``labelfix.cleaning.scores.list_scorers()``). For
            ``posterior`` the per-class noise rates are estimated over all rows first
            (confident joint, :mod:`labelfix.cleaning.noise_rates`) and recorded in
            ``settings["noise_rates"]``.
        gmm_options: keyword options of :func:`labelfix.cleaning.gmm.fit_label_gmms`
            (max_iter, tol, reg_covar, em, bins, min_cells).
        monotone: p_clean never increases with the loss (see ``posterior_values``).
        out_dir: when given, the per-cell arrays are written there as ``p_clean.npy``,
            ``score.npy``, ``state.npy``, ``suggested.npy`` (atomic memmaps, filled chunk
            by chunk) and returned as read-only memmaps.
        chunk_rows: rows per chunk (default about 2M cells).
        device: torch device for the GMM arithmetic ("cpu", the default, runs in numpy
            and does not import torch).
        labels, pred_probs: cleanlab's names for ``given`` and ``probs`` (give one name
            of each pair); ``labels`` is the same (N, K) matrix, not cleanlab's
            multi-label list of class-index lists (refused when its rows differ in length).

    Inputs are checked first (:mod:`labelfix.validation`): lists, tuples, torch tensors
    (any device, float16 / bfloat16, with grad) and pandas DataFrames are converted to
    arrays; DataFrames given with a DataFrame ``given`` must have its row index and
    columns where both name them (rows in another order are refused, not paired by
    position; pandas' default 0..n-1 is positional); given labels must be 1 / 0 / -1
    (bool and float matrices are converted; NaN is refused: use -1 for unknown); ``probs`` must be
    probabilities in [0, 1] (values outside look like logits: pass
    ``probs_are_logits=True``) and not NaN except in whole rows (images the model did
    not score); every per-cell input must have the shape of ``given``.

    Returns:
        LabelIssues (per-cell arrays, ``corrections`` DataFrame with columns
        image_index, class_index, given ("1" / "0" / "unknown"; categorical), suggested (1 / 0),
        action ("add" / "remove"), state ("re-labeled" / "ambiguous" / "estimated"),
        score, p_clean, probability; sorted by score, highest first).

    Examples:
        >>> issues = find_label_issues(labels, probs)                    # doctest: +SKIP
        >>> issues.corrections.head()                                    # doctest: +SKIP
    """
    if features is not None:   # (N, D): paired with a DataFrame given by its row index only
        check_aligned(given if labels is None else labels, {"features": features}, axes=("index",))
    given, probs, losses, dynamics, two_view, estimates, neighbours, verified = _checked_inputs(
        given, probs, losses, dynamics, two_view, estimates, neighbours, verified, labels, pred_probs,
        probs_are_logits)
    shape = tuple(given.shape)
    N, K = shape
    classes, out_dir = _checked_options(K, classes, gmm_options, out_dir)
    check_number(clean_threshold, "clean_threshold", low=0.0, high=1.0, high_open=True)
    if relabel_threshold is not None:
        check_number(relabel_threshold, "relabel_threshold", low=0.5, high=1.0, high_open=True)
    if estimate_threshold is not None:
        check_number(estimate_threshold, "estimate_threshold", low=0.5, high=1.0, high_open=True)
    if max_suggestions is not None:
        check_number(max_suggestions, "max_suggestions", integer=True, low=0)
    if chunk_rows is not None:
        check_number(chunk_rows, "chunk_rows", integer=True, low=1)
    device = check_device(device, "device")
    skip = _class_mask(unscored_classes, K)
    score_fn = _scores.get_scorer(scorer)
    rows = chunk_rows or _gmm.default_chunk_rows(K)
    # positive-only (single-positive) labels: every given positive is trusted, like a verified
    # cell, and delta defaults to the setting's 0.55 (one pass over the labels for both)
    single = positive_only(given, chunk_rows=rows)
    if features is not None:   # after every cheap check: the neighbour search is the slow part
        neighbours = _vote_from_features(features, given, neighbours, scorer, single)
    delta = float(relabel_threshold) if relabel_threshold is not None else delta_for(single)
    if not 0.5 <= delta < 1.0:
        raise LabelfixError(f"relabel_threshold: {delta}: must be in [0.5, 1)")
    est_thr = float(estimate_threshold) if estimate_threshold is not None else DEFAULT_ESTIMATE_THRESHOLD
    if not 0.5 <= est_thr < 1.0:
        raise LabelfixError(f"estimate_threshold: {est_thr}: must be in [0.5, 1)")
    if single_positive_removals and not single:
        raise LabelfixError("single_positive_removals (`clean --single-positive-removals`): the labels are not "
                            "single-positive (positive-only: at most half the cells are unknown, or the known "
                            "ones hold as many negatives as positives), so no given positive is trusted to begin "
                            "with")
    trust_positives = single and not single_positive_removals

    loss_src = losses if losses is not None else LazyBCE(probs, given, probs_are_logits)
    dyn_src = dynamics if dynamics is not None else loss_src
    prob_src = LazyProbs(probs) if probs_are_logits else probs
    fit = _gmm.fit_label_gmms(loss_src, given, chunk_rows=rows, device=device, **(gmm_options or {}))
    rates = err_rate = None
    # a pass over all rows before the scores (confident joint): for the per-class rates, or
    # for the known cells' error rate where known and unknown cells rank together (not in
    # single-positive data, whose known cells are trusted positives that rank with nothing)
    counts = given_counts(given, chunk_rows=rows) if score_fn.needs_known_error_rate else None
    mixed = counts is not None and 0 < counts.sum() < N * K and not trust_positives
    if score_fn.needs_noise_rates or mixed:
        joint = confident_joint(given, EvidenceRows(prob_src, neighbours), chunk_rows=rows)
        rates = noise_rates(joint, counts) if score_fn.needs_noise_rates else None
        err_rate = known_error_rate(joint, counts) if mixed else None

    cand = {c: [] for c in ("i", "k", "g", "s", "st", "score", "p", "prob")}
    unscored_images = unranked = 0
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            out_dir = Path(out_dir)
            outs = {n: stack.enter_context(atomic_memmap(out_dir / f"{n}.npy", shape, dt))
                    for n, dt in CELL_ARRAYS.items()}
        else:
            outs = {n: np.empty(shape, dt) for n, dt in CELL_ARRAYS.items()}
        for a in range(0, N, rows):
            b = min(N, a + rows)
            g = np.asarray(given[a:b])
            pr = np.asarray(prob_src[a:b], dtype=np.float32)
            tv = None if two_view is None else np.asarray(two_view[a:b], dtype=np.float32)
            es = None if estimates is None else np.asarray(estimates[a:b], dtype=np.float32)
            ls = np.asarray(dyn_src[a:b], dtype=np.float32)
            nb = None if neighbours is None else np.asarray(neighbours[a:b], dtype=np.float32)
            pc = _gmm.clean_posterior_rows(loss_src, given, fit, a, b, monotone=monotone, device=device)
            relabel_c = _scores._finite_or(tv, pr)
            st, tg, _ = assign_states_block(g, pc, relabel_c, clean_threshold=clean_threshold, delta=delta)
            sc = score_fn(g, probs=pr, p_clean=pc, two_view=tv, losses=ls,
                          estimates=es, neighbours=nb, noise_rates=rates, known_error_rate=err_rate)
            sg = _suggest_block(g, st, tg, pr, tv, es, est_thr)
            # a cell the model did not score has no evidence: kept as given, ranked nowhere
            unscored = np.isnan(pr)
            unscored_images += int(unscored.any(1).sum())
            unranked += int((np.isnan(sc) & ~unscored).sum())
            if skip is not None:
                unscored = unscored | skip
            if unscored.any():
                pc = np.where(unscored, np.float32(np.nan), pc)
                st = np.where(unscored & (g != UNK), np.int8(CLEAN), st).astype(np.int8)
                sg = np.where(unscored, g, sg).astype(np.int8)
            sc = np.where(unscored, np.float32(0.0), np.nan_to_num(sc, nan=0.0)).astype(np.float32)
            if verified is not None or trust_positives:   # a person's decision stands
                vf = (g == 1) if trust_positives else np.zeros(g.shape, bool)
                if verified is not None:
                    vf = vf | np.asarray(verified[a:b], dtype=bool)
                pc = np.where(vf & (g != UNK), np.float32(1.0), pc)
                st = np.where(vf & (g != UNK), np.int8(CLEAN), st).astype(np.int8)
                sc = np.where(vf, np.float32(0.0), sc)
                sg = np.where(vf, g, sg).astype(np.int8)
            outs["p_clean"][a:b], outs["score"][a:b], outs["state"][a:b], outs["suggested"][a:b] = pc, sc, st, sg
            change = ((g != UNK) & (sg != g) & (sg != UNK)) | ((g == UNK) & (sg == 1))
            ii, kk = np.nonzero(change)
            if ii.size:
                cand["i"].append(ii + a)
                cand["k"].append(kk)
                cand["g"].append(g[ii, kk])
                cand["s"].append(sg[ii, kk])
                cand["st"].append(st[ii, kk])
                cand["score"].append(sc[ii, kk])
                cand["p"].append(pc[ii, kk])
                cand["prob"].append(pr[ii, kk])
        arrays = outs
    if out_dir is not None:
        # inside an output set (labelfix clean) the files are still their temporaries
        arrays = {n: load_npy(staged(out_dir / f"{n}.npy"), mmap_mode="r") for n in CELL_ARRAYS}

    corrections = _corrections_frame(cand, max_suggestions, classes)
    return LabelIssues(
        p_clean=arrays["p_clean"], score=arrays["score"], state=arrays["state"], suggested=arrays["suggested"],
        corrections=corrections, gmms=fit, delta=delta, estimate_threshold=est_thr,
        settings=dict(clean_threshold=clean_threshold, scorer=scorer, monotone=monotone,
                      trusted_single_positives=bool(trust_positives),
                      gmm=dict(fit.settings),
                      noise_rates=None if rates is None else rates.round(6).tolist(),
                      known_error_rate=None if err_rate is None else round(err_rate, 6),
                      unscored_images=unscored_images, unranked_cells=unranked,
                      unscored_classes=[] if skip is None else np.flatnonzero(skip).tolist()),
    )


def _class_mask(indices, n_classes: int) -> np.ndarray | None:
    """bool (K,) of ``unscored_classes`` (None when none); one line for an index that is
    not a class."""
    if indices is None:
        return None
    if np.ndim(indices) != 1:
        raise LabelfixError(f"unscored_classes: {indices!r}: expected a list of class indices")
    idx = np.asarray(list(indices))
    if idx.size == 0:
        return None
    if idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n_classes:
        raise LabelfixError(f"unscored_classes: {idx.tolist()}: expected class indices in [0, {n_classes})")
    mask = np.zeros(n_classes, dtype=bool)
    mask[idx] = True
    return mask


def _corrections_frame(cand: dict, max_suggestions: int | None, classes) -> pd.DataFrame:
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cand.items()}
    order = np.lexsort((cat["k"], cat["i"], -cat["score"].astype(np.float64)))
    if max_suggestions is not None:
        order = order[: max(0, int(max_suggestions))]
    # categorical columns: a few bytes per row instead of a Python object per cell, which
    # matters with tens of millions of suggestions (1,000,000 x 1,000 runs)
    g = cat["g"][order].astype(np.int8)
    s = cat["s"][order].astype(np.int8)
    given_codes = np.where(g == UNK, 2, g).astype(np.int8)  # 0 -> "0", 1 -> "1", -1 -> "unknown"
    frame = pd.DataFrame({
        "image_index": cat["i"][order].astype(np.int64),
        "class_index": cat["k"][order].astype(np.int64),
        "given": pd.Categorical.from_codes(given_codes, [GIVEN_NAMES[0], GIVEN_NAMES[1], GIVEN_NAMES[UNK]]),
        "suggested": s.astype(np.int64),
        "action": pd.Categorical.from_codes((s == 1).astype(np.int8), ["remove", "add"]),
        "state": pd.Categorical.from_codes(cat["st"][order].astype(np.int8), [STATE_NAMES[c] for c in range(4)]),
        "score": cat["score"][order].astype(np.float32),
        "p_clean": cat["p"][order].astype(np.float32),
        "probability": cat["prob"][order].astype(np.float32),
    }, columns=CORRECTION_COLUMNS)
    if classes is not None:
        frame.insert(2, "class", take_labels(list(classes), frame["class_index"].to_numpy()))
    return frame.reset_index(drop=True)


def take_labels(values, codes: np.ndarray):
    """``values[codes]`` as a pandas Categorical when ``values`` are unique (compact for
    long tables), else as an object array."""
    values = list(values)
    if len(set(values)) == len(values):
        return pd.Categorical.from_codes(np.asarray(codes, np.int64), values)
    return np.asarray(values, dtype=object)[np.asarray(codes, np.int64)]


def write_cell_arrays(directory: str | Path, issues: LabelIssues, *, chunk_rows: int | None = None) -> dict:
    """Write the per-cell arrays of ``issues`` to ``directory`` (``p_clean.npy``,
    ``score.npy``, ``state.npy``, ``suggested.npy``) via atomic memmaps, chunk by chunk.
    Returns {name: path}."""
    directory = Path(directory)
    paths = {}
    for name, dt in CELL_ARRAYS.items():
        src = getattr(issues, name)
        n, k = src.shape
        rows = chunk_rows or _gmm.default_chunk_rows(k)
        path = directory / f"{name}.npy"
        with atomic_memmap(path, (n, k), dt) as mm:
            for a in range(0, n, rows):
                mm[a:a + rows] = src[a:a + rows]
        paths[name] = path
    return paths


# ESTIMATED / RELABELED re-exported for callers filtering ``state``
__all__ = ["LabelIssues", "find_label_issues", "write_cell_arrays", "CELL_ARRAYS", "CORRECTION_COLUMNS",
           "RELABELED", "AMBIGUOUS", "ESTIMATED"]
