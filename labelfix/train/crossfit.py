"""Cross-fitting (``labelfix train --folds K``): out-of-sample statistics for every label.

A model trained on a label memorises it, so its own loss on that label is weak evidence
that the label is wrong. With K folds, fold f's model trains on the other K-1 folds (with
the run's mixing, loss and label management) and records the statistics of fold f, which
it never saw.

Rounds (``--rounds R``, default 2): BalanceMix's label-wise management (per class and given
label a 2-component GMM on the losses, Song et al. 2024) applied to round r's *held-out*
losses marks the cells that look wrong; round r + 1 trains K fresh fold models with those
cells unknown, so their labels neither teach the models nor hide the other errors, and
records its own held-out statistics. On the demo data (mislabel 40 %, seed 0, where this
default was chosen) round 2 raised the held-out AP of label errors from 0.50 to 0.59
(docs/benchmarks.md reports it on other data).

Layout (docs/internals.md):

- ``RUN/folds.npy``: int8 (N,), the fold of every training image (-1: validation rows);
- ``RUN/folds/round<r>/fold<f>/``: the complete run directory of fold f in round r (its
  split marks fold f as held out, 2); each resumes on its own;
- ``RUN/stats/round<r>/``: round r's merged held-out ``logits.npy`` and ``loss_mean.npy``
  (each row from the model that did not see it) and ``suspicious.npy`` (bool (N, K), the
  cells round r + 1 trains as unknown); with a ROLE refit ``round1/role_start.npy``, where
  the later rounds' label tables start;
- ``RUN/stats/``: ``logits.npy`` of the last round, ``loss_mean.npy`` of round 1 (the
  round that trains on the given labels), ``state.json`` with ``"out_of_sample": true``;
- ``RUN/checkpoints/{last,best}.pt``: the ensemble of the last round's K fold models
  (mean of their logits; with a refit loss, of every round's), the run's one model for
  export and predict;
- ``RUN/metrics.csv``: every fold's rows with ``round`` and ``fold`` columns;
- ``RUN/skipped_images.csv``: the images any fold model could not read (when there are).

Refit loss (``refit_loss``; ``--loss auto`` sets ROLE on positive-only labels): rounds 2..R
train that loss, without mixing, with kappa (expected positives per image, which
single-positive labels cannot give) estimated from round 1's held-out model
(``labelfix.losses.kappa_from_held_out``, Elkan & Noto 2008); a round 2 then trains even
without suspicious cells, and ``labelfix clean`` judges every cell by the mean of the
rounds' held-out logits (docs/training.md, "Choosing the loss").

Folds are drawn with a seeded permutation, stratified on the rarest positive class of each
image, so every class has positives in every fold when it has at least K of them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.io.arrays import load_npy
from labelfix.labels import NEG, POS, UNK, LabelSet
from labelfix.train import evaluate
from labelfix.train import stats as stats_mod
from labelfix.train.config import MIXER_OPTIONS, TrainConfig, read_run_config, write_run_config
from labelfix.train.data import HELD_OUT
from labelfix.train.foldpool import FoldJob
from labelfix.train.progress import to_stderr

def assign_folds(labels: np.ndarray, train_rows: np.ndarray, k: int, seed: int, class_names=None,
                 folds_optional: bool = True) -> np.ndarray:
    """int8 (N,): fold 0..k-1 of each training row, -1 elsewhere.

    Rows are ordered by the training-set frequency of their rarest positive class (rows
    without a positive last), ties in a seeded random order, and dealt round-robin, so
    each class's positives spread evenly over the folds. Raises one clear line when a
    class that has positives has fewer than ``k`` of them (``folds_optional=False``: the
    caller cannot train without folds, so the line does not suggest it)."""
    labels = np.asarray(labels)
    rows = np.asarray(train_rows)
    pos = labels[rows] == POS
    counts = pos.sum(0)
    thin = np.flatnonzero((counts > 0) & (counts < k))
    if thin.size:
        j = int(thin[np.argmin(counts[thin])])
        name = repr(str(class_names[j])) if class_names is not None else f"column {j}"
        fix = (f"use --folds {int(counts[j])} or fewer, or drop the class" if counts[j] >= 2 else
               "cross-fitting needs 2 per class: drop the class" + (", or train without --folds" if folds_optional
                                                                     else ""))
        raise LabelfixError(f"--folds {k}: larger than the smallest class: class {name} has {int(counts[j])} "
                            f"training positive(s); {fix}")
    rarity = np.where(pos, counts[None, :], np.iinfo(np.int64).max).min(1)
    shuffle = np.random.default_rng(seed + 7907).permutation(rows.size)
    order = shuffle[np.argsort(rarity[shuffle], kind="stable")]
    folds = np.full(labels.shape[0], -1, dtype=np.int8)
    folds[rows[order]] = np.arange(rows.size) % k
    return folds


def fold_dir(run: Path, f: int, r: int = 1) -> Path:
    """Run directory of fold ``f`` (0-based) in round ``r`` (1-based)."""
    return Path(run) / "folds" / f"round{r}" / f"fold{f}"


def _complete(run: Path, epochs: int) -> bool:
    state = stats_mod.read_state(Path(run) / "stats")
    return bool(state.get("complete")) and int(state.get("last_epoch", -1)) + 1 >= epochs \
        and (Path(run) / "checkpoints" / "last.pt").exists()


#: how round r - 1's suspicious cells are chosen (:func:`suspicious_cells`)
SUSPICIOUS_RULES = ("class", "loss")


def suspicious_rule(logits: np.ndarray, given: np.ndarray, rows: np.ndarray) -> tuple[str, float]:
    """``(rule, R)``: which cells the next round hides, from the kind of noise the
    held-out model sees in ``rows``. R is the count dispersion of the given labels
    against the held-out probabilities (:func:`labelfix.cleaning.noise_rates.count_dispersion`).
    Below :data:`~labelfix.cleaning.noise_rates.COUNT_KEEPING_MAX` the noise keeps each
    image's count of positives (class confusion): ``"class"``, each (class, given label)
    GMM picks its own cells; else (independent flips, missing labels, NaN): ``"loss"``,
    the same number of cells with the highest held-out loss over all classes."""
    from labelfix.cleaning.noise_rates import COUNT_KEEPING_MAX, count_dispersion
    from labelfix.numeric import sigmoid

    r = count_dispersion(np.asarray(given)[rows], sigmoid(np.asarray(logits[rows], dtype=np.float32)))
    return ("class" if r < COUNT_KEEPING_MAX else "loss"), r


def suspicious_cells(logits: np.ndarray, given: np.ndarray, rows: np.ndarray, trusted: np.ndarray | None = None,
                     clean_threshold: float = 0.5, rule: str = "class") -> np.ndarray:
    """The cells the next round trains as unknown: bool (N, K); trusted cells never are.

    *How many*: BalanceMix's label-wise management on held-out losses. Per class and
    given label (1 / 0) a 2-component GMM on the held-out BCE of the known cells of
    ``rows``; a cell counts when its clean posterior p_G <= ``clean_threshold`` *and* the
    held-out model puts its label below probability 0.5 (loss > log 2). A 2-component GMM
    always splits a group, even one without a wrong label; the second condition keeps
    such groups' cells (on the demo data, mislabel 40 % seed 0, it masked 1,546 cells
    instead of 1,861 for the same gain).

    *Which* (``rule``, :func:`suspicious_rule` chooses it): ``"class"``, those cells, each
    group its own split; ``"loss"``, that many known cells with the highest held-out loss
    over all classes and labels, one scale for every group (under symmetric flips of rare
    classes most wrong labels are given positives, which the per-group split under-counts;
    under class confusion each hidden positive of a rare class is much of what the next
    models learn it from; docs/training.md "Rounds").
    """
    from labelfix.cleaning.gmm import clean_posterior, fit_label_gmms
    from labelfix.numeric import bce_logits

    if rule not in SUSPICIOUS_RULES:
        raise ValueError(f"rule {rule!r}: expected one of {SUSPICIOUS_RULES}")
    given = np.asarray(given)
    sub = np.where(np.isnan(np.asarray(logits[rows], dtype=np.float32)), np.int8(UNK), given[rows]).astype(np.int8)
    losses = bce_logits(np.nan_to_num(np.asarray(logits[rows], dtype=np.float32)), sub)
    p_clean = clean_posterior(losses, sub, fit_label_gmms(losses, sub))
    eligible = sub != UNK
    if trusted is not None:
        eligible &= ~np.asarray(trusted, dtype=bool)[rows]
    picked = eligible & (np.nan_to_num(p_clean, nan=1.0) <= clean_threshold) & (losses > np.log(2.0))
    if rule == "loss":
        count = int(picked.sum())
        ranked = np.where(eligible, losses, -np.inf).ravel()
        picked = np.zeros(ranked.shape, dtype=bool)
        picked[np.argsort(-ranked, kind="stable")[:count]] = True
        picked = picked.reshape(sub.shape)
    out = np.zeros(given.shape, dtype=bool)
    out[rows] = picked
    return out


def trusted_cells(labelset: LabelSet, train_rows: np.ndarray) -> np.ndarray:
    """bool (N, K): cells no round may call suspicious
    (:func:`labelfix.cleaning.states.trusted_cells` of the training rows)."""
    from labelfix.cleaning.states import trusted_cells as trusted

    return trusted(labelset.labels, labelset.trusted(), train_rows)


def unknown_judge(cfg: TrainConfig) -> str:
    """Which statistics judge the unknown cells of a cross-fitted run: ``"ensemble"`` (the
    mean of round 1's K fold models, ``labelfix.cleaning.clean_run.fold_ensemble_logits``)
    when neither the loss nor the mixing gives unknown cells a training target
    (``labelfix.losses.trains_unknown``, ``Mixer.trains_unknown``): then no model saw a
    label on them, every model is out of sample there, and K models trained on (K-1)/K of
    the images each beat the one that held the image out. Else ``"held_out"``, also when
    later rounds train a ``refit_loss`` (which trains unknown cells: the rounds' held-out
    logits judge them, ``labelfix.cleaning.clean_run.judged_by_rounds``)."""
    from labelfix.losses import trains_unknown
    from labelfix.train.mixers import mixer_class

    # a run records its resolved method; "auto" (a config written by hand) picks none or
    # LogicMix without curriculum, and neither trains unknown cells
    mixer = mixer_class("none" if cfg.mix == "auto" else cfg.mix)
    seen = mixer.trains_unknown(cfg) or trains_unknown(cfg.loss)
    return "held_out" if seen or cfg.refit_loss else "ensemble"


def train_folds(cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None,
                fold_pool=None) -> dict:
    """Cross-fit ``cfg.folds`` models (``cfg.rounds`` rounds) into ``cfg.out`` (module
    docstring); returns the summary of :func:`labelfix.train.train` with every fold's
    metrics rows. ``fold_pool``: an open :class:`labelfix.train.foldpool.FoldPool` of
    ``cfg.fold_workers`` processes to train the fold models in (left open), instead of
    one started and closed for this run."""
    from labelfix.train.distributed import cleanup, init_distributed, resolve_device
    from labelfix.train.engine import Trainer
    from labelfix.train.features import feature_info

    cfg = cfg.validate()
    out = Path(cfg.out)
    k = cfg.folds
    dist = init_distributed(resolve_device(cfg.device).type)
    # the driver's own lines (rounds, kappa, notes): where a Trainer's go without a log
    # function (the CLI), once per torchrun job (before: dropped without one)
    say = log if log is not None else (to_stderr if dist.is_main else (lambda s: None))
    pool = None
    try:
        pool = open_fold_pool(cfg, callbacks, dist, fold_pool)   # refusals before anything is written
        cfg, labelset, split, folds = _open_run(cfg, dist, say)
        given = np.asarray(labelset.labels)
        train_rows = np.flatnonzero(folds >= 0)
        trusted = trusted_cells(labelset, train_rows)
        rows: list[dict] = []
        current = labelset
        images: dict = {}   # decoded images, shared by every fold model (labelfix.train.data.build_datasets)
        last = 1
        round_cfg = cfg   # the options of round r's fold models
        role_start = None   # a ROLE refit round's table start (refit_estimates)
        weights_said = False   # the first fold model trained says which weights it loaded; its siblings not

        def run_round(r: int, round_cfg: TrainConfig, current: LabelSet, role_start, *, embed: bool) -> None:
            """Train round r's fold models (those not complete yet), in the pool or here;
            a complete one whose embedding (``embed``) is missing or unfinished (a kill
            during the pass, or rounds that stopped before the last) only embeds the images."""
            nonlocal weights_said
            jobs = []
            for f in range(k):
                sub = fold_dir(out, f, r)
                sub_cfg = dataclasses.replace(round_cfg, folds=0, rounds=None, refit_loss=None, out=str(sub),
                                              fold_workers=1,
                                              workers=0 if pool is not None else cfg.workers,   # fold processes: 0
                                              resume=(sub / "checkpoints" / "last.pt").exists(),
                                              progress=cfg.progress and pool is None)
                where = (f"cross-fitting round {r}/{cfg.rounds}, fold {f + 1}/{k}" if cfg.rounds > 1
                         else f"fold {f + 1}/{k}")
                emb = sub / "stats" / "embeddings.npy"
                embedded = not embed or cfg.frozen or (emb.exists() and bool(feature_info(emb).get("complete")))
                only = sub_cfg.resume and _complete(sub, cfg.epochs)
                if only and embedded:
                    say(f"{where}: complete")
                    continue
                if only:
                    say(f"{where}: complete; its embedding of the images was not, embedding them")
                else:
                    say(f"{where}: training on {int(((folds >= 0) & (folds != f)).sum())} images, "
                        f"holding out {int((folds == f).sum())}")
                fold_split = np.where(folds == f, HELD_OUT, split).astype(np.int8)
                say_weights, weights_said = not weights_said, True
                if pool is not None:
                    jobs.append(FoldJob(f, sub_cfg, current, fold_split, where, str(out / "features"), role_start,
                                        embed, only, say_weights))
                    continue
                # --frozen: one embedding in RUN/features for every fold (the backbone does not train)
                t = Trainer(sub_cfg, callbacks=callbacks, log=log, labelset=current, split=fold_split,
                            features_dir=out / "features", keep_process_group=True, image_cache=images,
                            role_estimates=role_start, embed=embed, log_prefix=f"{where}: ", say_weights=say_weights)
                t.embed_only() if only else t.fit()
            if pool is not None:   # without a log function the fold lines go where a Trainer's would
                pool.run(jobs, log or to_stderr)

        for r in range(1, cfg.rounds + 1):
            if r > 1:   # the previous round's suspicious cells train as unknown
                inputs = _later_round(r, cfg, labelset, train_rows, trusted, dist, say)
                if inputs is None:
                    break
                current, round_cfg, role_start = inputs
            last = r
            # only the last round's fold embeddings feed clean's neighbour evidence
            run_round(r, round_cfg, current, role_start, embed=r == cfg.rounds)
            for f in range(k):
                frame = pd.read_csv(fold_dir(out, f, r) / "metrics.csv")
                frame.insert(0, "fold", f)
                frame.insert(0, "round", r)
                rows += frame.to_dict("records")
            if dist.is_main:
                merge_round(out, r, given.shape, folds, k)
        if last < cfg.rounds and not cfg.frozen:   # the rounds stopped early: round `last`'s models embed
            say(f"cross-fitting round {last}/{cfg.rounds}: its fold models embed the images (clean's neighbour "
                f"evidence)")
            run_round(last, round_cfg, current, role_start, embed=True)
        skipped = 0
        if dist.is_main:
            finish(out, last, folds, k, cfg.epochs, every_round=bool(cfg.refit_loss))
            atomic.write_csv(out / "metrics.csv", pd.DataFrame(rows))
            reasons = merge_skipped(out, last, k)
            skipped = len(reasons)
            if skipped:
                say(f"{evaluate.skipped_summary(reasons)}; see {out / 'skipped_images.csv'}")
        say(f"cross-fitted {k} folds: held-out statistics in {out / 'stats'}, ensemble in {out / 'checkpoints'}")
        return {"epochs": cfg.epochs, "metrics": rows, "skipped": skipped, "out": str(out), "folds": k}
    finally:
        if pool is not None and pool is not fold_pool:
            pool.close()
        cleanup(dist)


def _open_run(cfg: TrainConfig, dist, say: Callable[[str], None]):
    """A new cross-fitted run in ``cfg.out`` (labels read, ``--mix / --loss auto`` resolved,
    folds drawn, the run's files written on rank 0) or the one ``--resume`` continues
    (checked against its config.yaml); then its config.yaml and, for a new run, the note
    on ``--val`` images that are training images. Returns ``(cfg, labelset, split, folds)``,
    ``cfg`` as the run trains."""
    from labelfix.train.data import read_run_labels, split_indices

    out, k = Path(cfg.out), cfg.folds
    if cfg.resume:
        if not (out / "folds.npy").exists():
            raise LabelfixError(f"{out / 'folds.npy'}: missing; not a cross-fitted run to resume")
        from labelfix.train.checkpoint import check_resume_compatible

        cfg = check_resume_compatible(read_run_config(out), cfg, out)
        labelset, split, folds = LabelSet.load(out), load_npy(out / "split.npy"), load_npy(out / "folds.npy")
    else:
        if (out / "folds.npy").exists() or (out / "checkpoints" / "last.pt").exists():
            raise LabelfixError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        from labelfix.train.optim import resolve_auto

        labelset = read_run_labels(cfg, cfg.data)
        split = split_indices(labelset.num_images, cfg.val_split, cfg.seed)
        cfg = resolve_auto(cfg, labelset.labels, np.flatnonzero(split == 0), labelset.class_names, say)
        folds = assign_folds(labelset.labels, np.flatnonzero(split == 0), k, cfg.seed, labelset.class_names)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            labelset.save(out)
            atomic.write_npy(out / "split.npy", split)
            atomic.write_npy(out / "folds.npy", folds)
    if dist.is_main:
        extra = {"images": int(labelset.num_images), "classes": int(labelset.num_classes),
                 "folds": [int((folds == f).sum()) for f in range(k)],
                 "source": str(labelset.source.get("path", cfg.data))}
        note = write_run_config(cfg, labelset.fingerprint(), extra)
        if note:
            say(note)
        if cfg.val and not cfg.resume:   # its fold models leave this note to the driver
            from labelfix.train.data import read_validation

            read_validation(cfg, labelset, say)
    return cfg, labelset, split, folds


def _later_round(r: int, cfg: TrainConfig, labelset: LabelSet, train_rows: np.ndarray, trusted: np.ndarray, dist,
                 say: Callable[[str], None]):
    """The inputs of round ``r`` >= 2: ``(labels, options, ROLE table start or None)``,
    the labels with round r - 1's suspicious cells unknown (:func:`suspicious_cells`,
    written once to ``stats/round<r-1>/suspicious.npy``) and, with a refit loss, its
    options and kappa; None when there is nothing to refit (no suspicious cell, no refit
    loss)."""
    from labelfix.train.distributed import broadcast_object

    out, k, given = Path(cfg.out), cfg.folds, np.asarray(labelset.labels)
    mask_path = out / "stats" / f"round{r - 1}" / "suspicious.npy"
    if dist.is_main and not mask_path.exists():
        logits = load_npy(out / "stats" / f"round{r - 1}" / "logits.npy", mmap_mode="r")
        rule, dispersion = suspicious_rule(logits, given, train_rows)
        if np.isnan(dispersion):
            what = "undefined (no known cell with a probability strictly between 0 and 1)"
        elif rule == "class":
            what = (f"{dispersion:.2f}: the noise keeps each image's count of positives (class confusion); each class "
                    f"and label hides its own suspicious cells")
        else:
            what = (f"{dispersion:.2f}: the noise changes counts (flips, missing labels); the suspicious cells are "
                    f"chosen by the held-out loss over all classes")
        say(f"cross-fitting round {r}/{cfg.rounds}: count dispersion of round {r - 1}'s held-out model {what}")
        atomic.write_npy(mask_path, suspicious_cells(logits, given, train_rows, trusted, rule=rule))
    mask = broadcast_object(load_npy(mask_path) if dist.is_main else None, dist)
    if not mask.any() and not cfg.refit_loss:
        say(f"cross-fitting round {r}/{cfg.rounds}: no suspicious cell in round {r - 1}; nothing to refit")
        return None
    current = LabelSet(np.where(mask, np.int8(UNK), given).astype(np.int8), labelset.images,
                       labelset.classes, labelset.image_root, dict(labelset.source), labelset.verified)
    if mask.any():
        say(f"cross-fitting round {r}/{cfg.rounds}: {int(mask.sum())} suspicious cells of round {r - 1} "
            f"train as unknown")
    if not cfg.refit_loss:
        return current, cfg, None
    # a round that has started keeps its kappa (a resume with more --epochs retrains
    # round 1 and rewrites its logits; round r keeps its inputs, as its mask)
    kappa = broadcast_object((started_kappa(out, r, k) or refit_kappa(cfg, out, given, train_rows))
                             if dist.is_main else None, dist)
    negatives = bool((np.asarray(current.labels[train_rows]) == NEG).any())
    round_cfg = refit_config(cfg, kappa, observed_negatives=negatives)
    role_start = broadcast_object(_round_role_start(cfg, out, given, train_rows) if dist.is_main else None, dist)
    say(f"cross-fitting round {r}/{cfg.rounds}: --loss {round_cfg.loss} with kappa {kappa:g} "
        f"(expected positives per image, from round 1's held-out model), --mix none"
        + ("; its label table starts from round 1's held-out estimates" if role_start is not None else ""))
    return current, round_cfg, role_start


def refit_kappa(cfg: TrainConfig, out: Path, given: np.ndarray, train_rows: np.ndarray) -> float:
    """kappa for ``cfg.refit_loss`` (rounds 2..R): from round 1's merged held-out logits
    against the given labels (:func:`labelfix.losses.kappa_from_held_out`), unsmoothed by
    round 1's loss, rounded to 4 decimals (it is recorded in every fold's config.yaml; a
    resumed run computes the same value from the same file)."""
    from labelfix.losses import kappa_from_held_out, target_smoothing

    logits = load_npy(out / "stats" / "round1" / "logits.npy", mmap_mode="r")
    return round(kappa_from_held_out(logits, given, train_rows, target_smoothing(cfg.loss)), 4)


def started_kappa(out: Path, r: int, k: int) -> float | None:
    """The kappa round ``r`` started with (its fold models' ``config.yaml``), or None when
    none of them has started."""
    from labelfix.train.config import read_run_config

    for f in range(k):
        if (fold_dir(out, f, r) / "config.yaml").exists():
            kappa = (read_run_config(fold_dir(out, f, r)).loss_kwargs or {}).get("kappa")
            if kappa is not None:
                return float(kappa)
    return None


def refit_estimates(cfg: TrainConfig, out: Path, given: np.ndarray, train_rows: np.ndarray) -> np.ndarray | None:
    """float16 (N, K): where a ROLE refit round's label table starts (labelfix's warm start,
    docs/training.md): round 1's merged held-out estimate of P(positive) per cell
    (:func:`labelfix.losses.estimates_from_held_out`: an assumed-negative model's g / c,
    c from the given positives of ``train_rows``), instead of the paper's uniform start.
    None when the refit loss has no table (EPR)."""
    from labelfix.losses import estimates_from_held_out, target_smoothing, trains_unknown

    if cfg.refit_loss != "role":
        return None
    logits = load_npy(out / "stats" / "round1" / "logits.npy", mmap_mode="r")
    return estimates_from_held_out(logits, given, train_rows, target_smoothing(cfg.loss),
                                   assumed_negative=trains_unknown(cfg.loss)).astype(np.float16)


def _round_role_start(cfg: TrainConfig, out: Path, given: np.ndarray, train_rows: np.ndarray) -> np.ndarray | None:
    """:func:`refit_estimates`, computed once and kept in ``stats/round1/role_start.npy``:
    the later rounds keep the start their first fold models had, as they keep their mask
    and kappa (a resume with more --epochs rewrites round 1's logits; a fold model of round
    2 that had not started then began from the new ones while its siblings had the old)."""
    path = out / "stats" / "round1" / "role_start.npy"
    if path.exists():
        return load_npy(path)
    start = refit_estimates(cfg, out, given, train_rows)
    if start is not None:
        atomic.write_npy(path, start)
    return start


def refit_config(cfg: TrainConfig, kappa: float, observed_negatives: bool = False) -> TrainConfig:
    """The options of rounds 2..R when ``cfg.refit_loss`` is set: that loss with ``kappa``,
    without mixing (ROLE's label table has one row per image) and its method options, and
    with the class-prior bias at its default (off for these losses, which set the outputs'
    scale by kappa). ``observed_negatives`` (the training labels hold known negatives, e.g.
    suggestions a reviewer rejected): the loss trains them as negatives, as round 1's did;
    the paper's losses use the observed positives only. Everything else as in round 1."""
    unset = {name: None for name in MIXER_OPTIONS}
    kwargs = {"kappa": kappa, **({"observed_negatives": True} if observed_negatives else {})}
    return dataclasses.replace(cfg, loss=cfg.refit_loss, loss_kwargs=kwargs, mix="none",
                               prior_bias=None, refit_loss=None, **unset)


def open_fold_pool(cfg: TrainConfig, callbacks: list | None, dist, shared=None):
    """The :class:`labelfix.train.foldpool.FoldPool` of ``--fold-workers W`` (> 1): the
    caller's ``shared`` pool if given (it must have min(W, K) workers), else a new one;
    None for W = 1. One line refuses what it cannot do: GPUs (use torchrun), callbacks
    (they run in this process; the folds would run in others)."""
    if shared is not None:
        shared.check_open()
        if shared.workers != min(cfg.fold_workers, cfg.folds):
            raise ValueError(f"fold_pool has {shared.workers} workers; this run trains "
                             f"{min(cfg.fold_workers, cfg.folds)} fold models at a time (fold_workers "
                             f"{cfg.fold_workers}, folds {cfg.folds})")
    if cfg.fold_workers <= 1:
        return None
    from labelfix.train.distributed import resolve_device
    from labelfix.train.foldpool import FoldPool

    if resolve_device(cfg.device).type != "cpu" or dist.enabled:
        raise LabelfixError("train: --fold-workers: trains fold models side by side on the CPU; on GPUs use "
                            "torchrun (docs/training.md)")
    if callbacks:
        raise LabelfixError("train: --fold-workers: callbacks run in this process, the fold models in others; "
                            "use --fold-workers 1 with callbacks")
    return shared if shared is not None else FoldPool(cfg.fold_workers, cfg.folds)


def merge_round(out: Path, r: int, shape: tuple[int, int], folds: np.ndarray, k: int) -> None:
    """``RUN/stats/round<r>/{logits,loss_mean}.npy``: every row from the fold model that
    held it out (validation rows: fold 0's). Idempotent."""
    dst_dir = out / "stats" / f"round{r}"
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name, dtype in (("logits", np.float16), ("loss_mean", np.float32)):
        with atomic.atomic_memmap(dst_dir / f"{name}.npy", shape, dtype, fill=np.nan) as dst:
            for f in range(k):
                src = load_npy(fold_dir(out, f, r) / "stats" / f"{name}.npy", mmap_mode="r")
                rows = np.flatnonzero(folds == f) if f else np.flatnonzero((folds == f) | (folds < 0))
                dst[rows] = src[rows]


def merge_skipped(out: Path, rounds: int, k: int) -> list[str]:
    """``RUN/skipped_images.csv``: the images any fold model of rounds 1..``rounds`` could
    not read (index, image_id, file_name, reason; one row each), so that the run lists
    them where a run without folds does. Returns the reason of each (empty: no file)."""
    frames = [pd.read_csv(p, keep_default_na=False) for r in range(1, rounds + 1) for f in range(k)
              if (p := fold_dir(out, f, r) / "skipped_images.csv").exists()]
    if not frames:
        return []
    merged = (pd.concat(frames).drop(columns="first_epoch").drop_duplicates("index")
              .sort_values("index").reset_index(drop=True))
    if "reason" not in merged:   # fold models trained before the reasons were recorded
        merged["reason"] = "failed to decode"
    atomic.write_csv(out / "skipped_images.csv", merged)
    return merged["reason"].tolist()


def finish(out: Path, rounds: int, folds: np.ndarray, k: int, epochs: int, every_round: bool = False) -> None:
    """The run's statistics and checkpoints: the last round trained (``rounds``)'s held-out logits, round 1's
    held-out loss mean (round 1 trains on the given labels, so its losses are against
    them), the ensemble of the last round's fold models, or with ``every_round`` of every
    round's (a refit loss: ``clean`` judges by the mean of the rounds' held-out logits, and
    the exported model is then the mean of the same models' logits). Idempotent."""
    stats = out / "stats"
    for name, r in (("logits", rounds), ("loss_mean", 1)):
        with atomic.atomic_path(stats / f"{name}.npy") as tmp:
            shutil.copyfile(stats / f"round{r}" / f"{name}.npy", tmp)
    stats_mod.write_state(stats, epochs, epochs - 1, complete=True, rounds=rounds)
    (out / "checkpoints").mkdir(exist_ok=True)
    for which in ("last", "best"):
        members = [torch.load(fold_dir(out, f, r) / "checkpoints" / f"{which}.pt", map_location="cpu",
                              weights_only=True)
                   for r in (range(1, rounds + 1) if every_round else [rounds]) for f in range(k)]
        with atomic.atomic_path(out / "checkpoints" / f"{which}.pt") as tmp:
            torch.save(ensemble_checkpoint(members), tmp)


def ensemble_checkpoint(members: list[dict]) -> dict:
    """A labelfix checkpoint holding several models of one ``model_config``
    (``model_config["ensemble"]`` = their count; ``model`` keys ``members.<i>.<key>``);
    ``labelfix.models.model_from_checkpoint`` rebuilds it as the mean of their logits."""
    first = members[0]
    config = dict(first["model_config"], ensemble=len(members))
    state = {f"members.{i}.{key}": value for i, m in enumerate(members) for key, value in m["model"].items()}
    ema = None
    if all(m.get("ema") is not None for m in members):
        ema = {f"members.{i}.{key}": value for i, m in enumerate(members) for key, value in m["ema"].items()}
    return {"model": state, "ema": ema, "model_config": config, "classes": first.get("classes"),
            "epoch": min(int(m.get("epoch", 0)) for m in members), "run_fingerprint": None}
