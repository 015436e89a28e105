"""``labelfix clean`` on a run directory: read the per-cell statistics that training
recorded, run label-wise management (:func:`labelfix.cleaning.find_label_issues`),
write the per-cell arrays, ``corrections.csv`` and the report.

What the run knows and how it is used (docs/cleaning.md):
- ``stats/logits.npy``: the model's probabilities (last evaluation pass, no augmentation);
- ``stats/loss_mean.npy``: per-cell loss averaged over epochs -> the GMMs' input
  (falls back to the BCE of the last pass) and the ``loss`` score (training dynamics);
- ``stats/round1/logits.npy`` (cross-fitted runs): round 1's held-out logits -> the
  GMMs' input instead (:func:`management_losses`);
- ``stats/two_view.npy``: BalanceMix's two-view probability -> re-labeling;
- ``stats/role_logits.npy``: ROLE's label estimator -> estimates for unknown cells.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from labelfix.cleaning.api import LabelIssues, LazyBCE, LazyProbs, find_label_issues, take_labels
from labelfix.cleaning.neighbours import DEFAULT_K
from labelfix.cleaning.scores import DEFAULT_SCORER, get_scorer
from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.io.arrays import load_npy, read_cell_array
from labelfix.run import CORRECTIONS_COLUMNS, Run

log = logging.getLogger(__name__)


def fold_ensemble_logits(run: Run):
    """Row-sliceable mean logits of a cross-fitted run's round-1 fold models, when
    ``crossfit.unknown_judge`` says they judge the unknown cells; else None.

    Round 1, not the last round: no model of any round saw a label on an unknown cell,
    and round 1's models trained on every given label, while later rounds drop the
    suspicious cells, which are mostly right but hard labels when the known labels are
    clean. On the demo digits (seed 0, missing 50 %) the unknown-positive AP of the
    round-1 ensemble was 0.905 / 0.601 (random init / frozen) against 0.870 / 0.575 for
    round 2's (docs/benchmarks.md)."""
    from labelfix.train.config import read_run_config
    from labelfix.train.crossfit import fold_dir, unknown_judge

    state = run.stats_state
    if not state.get("out_of_sample") or unknown_judge(read_run_config(run.path)) != "ensemble":
        return None
    folds = run.folds
    if folds is None:
        raise LabelfixError(f"{run.path / 'folds.npy'}: missing in a cross-fitted run (stats/state.json says "
                            f"out_of_sample); `labelfix train --resume` rewrites it")
    k = int(folds.max()) + 1
    shape = run.labelset.labels.shape
    return MeanOf([read_cell_array(fold_dir(run.path, f, 1) / "stats" / "logits.npy", shape) for f in range(k)])


def management_losses(run: Run):
    """The per-cell losses the label GMMs fit (float32, row-sliceable (N, K)).

    A cross-fitted run: the BCE of round 1's held-out logits against the given labels,
    the losses that chose round 2's suspicious cells; the GMM posterior then comes from
    other models than the last round's probabilities, and the last epoch is the model
    the run kept. The mean over epochs (``stats/loss_mean.npy``) gives the early, weak
    epochs an equal say: on the demo data (4 folds x 2 rounds, mislabel 40 %, seeds 0,
    1, 2) the suggestions' precision was 0.678 / 0.589 / 0.600 with round 1's last epoch
    against 0.651 / 0.557 / 0.584 with the mean (docs/cleaning.md). Else (in-sample
    statistics) ``stats/loss_mean.npy``, the small-loss trick's mean over epochs; None
    when the run has none (``find_label_issues`` then takes the BCE of the logits)."""
    if run.stats_state.get("out_of_sample"):
        return LazyBCE(run.stat("logits", round=1), run.labelset.labels, logits=True)
    return run.stat("loss_mean", required=False)


class MeanOf:
    """Row-sliceable float32 mean of equally shaped (N, K) arrays."""

    def __init__(self, arrays):
        self.arrays, self.shape = arrays, tuple(arrays[0].shape)

    def __getitem__(self, rows):
        return np.mean([np.asarray(a[rows], dtype=np.float32) for a in self.arrays], axis=0)


class UnknownFrom:
    """Row-sliceable (N, K) logits: ``held_out`` on known cells, ``ensemble`` on unknown
    ones (a cross-fitted run whose training never gave unknown cells a target)."""

    def __init__(self, held_out, ensemble, given):
        self.held_out, self.ensemble, self.given, self.shape = held_out, ensemble, given, tuple(held_out.shape)

    def __getitem__(self, rows):
        g = np.asarray(self.given[rows])
        return np.where(g == -1, np.asarray(self.ensemble[rows], dtype=np.float32),
                        np.asarray(self.held_out[rows], dtype=np.float32))


def pretrained_start(run: Run) -> bool:
    """Whether the run's backbone did not learn from random weights: ``--frozen``,
    ``--weights`` or ``--pretrained`` (``config.yaml``'s ``train``)."""
    t = run.config.get("train") or {}
    return bool(t.get("frozen") or t.get("weights") or t.get("pretrained"))


def known_judge_logits(run: Run):
    """Row-sliceable (N, K) logits that judge the run's known cells.

    ``stats/logits.npy``: the last evaluation pass, in a cross-fitted run the last round's
    held-out logits. A cross-fitted run with several rounds whose backbone started
    pretrained (:func:`pretrained_start`): the mean of every round's held-out logits, an
    ensemble of models trained on different label sets (round 2 hides round 1's
    suspicious cells). Chosen on digits seed 0 (docs/cleaning.md "Rounds as an ensemble"):
    a pretrained round-1 model is already a good judge, and the mean ranked the wrong
    labels better (AP, frozen / fine-tuned: flip 20 % +0.019 / +0.041, mislabel 40 %
    -0.004 / +0.011); a model learning from random weights is a weak judge in round 1,
    which round 2 improves on (demo recipe, seed 0: 0.554 last round, 0.548 the mean)."""
    rounds = judged_by_rounds(run)
    if rounds:
        return MeanOf([run.stat("logits", round=r) for r in range(1, rounds + 1)])
    return run.stat("logits")


def judged_by_rounds(run: Run) -> int:
    """How many cross-fitting rounds' held-out logits :func:`known_judge_logits` averages
    (0: the run's ``stats/logits.npy`` alone): every round's when the backbone started
    pretrained, or when the later rounds trained another loss than round 1 (:func:`refit_loss`:
    two methods' models, an ensemble; single-positive demo data from random weights, seed 0:
    unknown-positive AP 0.608 round 1 (AN-LS), 0.712 ROLE, 0.708 their mean; fine-tuned from
    ImageNet weights the mean ranked above both rounds on all four benchmark runs,
    docs/cleaning.md "Rounds of two losses")."""
    rounds = int(run.stats_state.get("rounds") or 1)
    several = run.stats_state.get("out_of_sample") and rounds > 1
    return rounds if several and (pretrained_start(run) or refit_loss(run)) else 0


def refit_loss(run: Run) -> str | None:
    """The loss of the run's cross-fitting rounds 2 and later when it differs from round
    1's (``config.yaml``'s ``train.refit_loss``), else None."""
    return (run.config.get("train") or {}).get("refit_loss") or None


def held_out_logits(run: Run):
    """Row-sliceable (N, K) logits that judge the run's cells: :func:`known_judge_logits`,
    with the round-1 fold ensemble on unknown cells where :func:`fold_ensemble_logits`
    applies."""
    logits = known_judge_logits(run)
    ensemble = fold_ensemble_logits(run)
    if ensemble is not None:   # no fold model saw a label on an unknown cell: all K judge it
        logits = UnknownFrom(logits, ensemble, run.labelset.labels)
    return logits


def check_with_run(run: Run, other: Run, *, chunk_rows: int = 65_536) -> None:
    """Refuse (one line) a run to average with ``run`` unless it is another finished run
    (``stats/logits.npy``) trained on the same images, classes and given labels, and is
    cross-fitted exactly when ``run`` is."""
    if other.path.resolve() == run.path.resolve():
        raise LabelfixError(f"{other.path}: --with-run names the run being cleaned")
    for name in ("logits.npy", "state.json"):
        if not (other.path / "stats" / name).exists():
            raise LabelfixError(f"{other.path}: --with-run: no stats/{name} (not a finished training run)")
    a, b = run.labelset, other.labelset
    where = f"{other.path}: --with-run"
    if not a.images["image_id"].equals(b.images["image_id"]):
        raise LabelfixError(f"{where}: its images are not {run.path}'s (image ids or their order differ)")
    if not a.classes["category_id"].equals(b.classes["category_id"]):
        raise LabelfixError(f"{where}: its classes are not {run.path}'s (category ids or their order differ)")
    if list(a.class_names) != list(b.class_names):
        k = next(i for i, (x, y) in enumerate(zip(a.class_names, b.class_names)) if x != y)
        raise LabelfixError(f"{where}: its classes are not {run.path}'s (category {int(a.classes['category_id'][k])} "
                            f"is {b.class_names[k]!r} there, {a.class_names[k]!r} here)")
    for s in range(0, a.num_images, chunk_rows):
        if not np.array_equal(a.labels[s:s + chunk_rows], b.labels[s:s + chunk_rows]):
            raise LabelfixError(f"{where}: its given labels differ from {run.path}'s (first in rows from {s}): "
                                "only runs trained on the same labels can be averaged")
    if bool(run.stats_state.get("out_of_sample")) != bool(other.stats_state.get("out_of_sample")):
        raise LabelfixError(f"{where}: one run is cross-fitted (held-out probabilities) and the other is not; "
                            "average runs of the same kind")


#: what a (class, given label) GMM that was not fitted means for its cells (docs/cleaning.md)
_GROUP_REASONS = {"empty": "no known cell", "too_few": "too few cells (min_cells {}): their cells count as clean",
                  "constant": "every loss equal: their cells count as clean"}


def degenerate_group_notes(fit, class_names, shown: int = 5) -> list[str]:
    """One note per reason a label-wise GMM was not fitted, naming the first ``shown``
    groups as ``class (positives)`` / ``class (negatives)``. ``fit``: group shape (K, 2),
    indexed [class, given label]."""
    reason = np.asarray(fit.reason).reshape(-1, 2)
    notes = []
    for why, meaning in _GROUP_REASONS.items():
        k, z = np.nonzero(reason == why)
        if k.size:
            named = [f"{class_names[a]} ({'positives' if b == 1 else 'negatives'})" for a, b in zip(k[:shown], z)]
            meaning = meaning.format(fit.settings.get("min_cells", "?"))
            notes.append(f"{k.size} label GMM group(s) not fitted, {meaning}: {', '.join(named)}"
                         + (", ..." if k.size > shown else ""))
    return notes


def run_evidence(run: Run, with_runs: Sequence[Run] = ()) -> dict:
    """The inputs of :func:`find_label_issues` that a run's training recorded, as keyword
    arguments (``given``, ``probs``, ``losses``, ``dynamics``, ``two_view``,
    ``estimates``, ``verified``; all row-sliceable, memory-mapped where stored): what
    ``labelfix clean`` scores, less the neighbours' votes, which it computes itself.

    ``with_runs``: other runs on the same labels (:func:`check_with_run`) whose
    held-out logits are averaged with the run's into ``probs`` (an ensemble of runs, e.g.
    ROLE and assume-negative models on single-positive labels, docs/cleaning.md); every
    other input stays the run's own."""
    ls = run.labelset
    logits = held_out_logits(run)
    for other in with_runs:
        check_with_run(run, other)
    if with_runs:
        logits = MeanOf([logits] + [held_out_logits(o) for o in with_runs])
    role = run.stat("role_logits", required=False)
    return dict(given=ls.labels, probs=LazyProbs(logits), losses=management_losses(run),
                dynamics=run.stat("loss_mean", required=False), two_view=run.stat("two_view", required=False),
                estimates=None if role is None else LazyProbs(role), verified=ls.verified)


def _learn_from_decisions(run: Run, issues, table: pd.DataFrame, known: dict, filtered: bool = False):
    """Re-weight the scores by the reviewer's decisions ``known``
    (:func:`labelfix.review.decisions.known_decisions`) on the suggestions of ``table``
    (``cells/score.npy`` rewritten, ``table`` re-sorted); ``(issues, table, notes)``.
    ``filtered``: --classes / --max-suggestions will shorten ``table`` (the note says the
    learning saw all of it)."""
    import dataclasses

    from labelfix.cleaning.calibration import decision_weights, reweight_scores
    from labelfix.cleaning.gmm import default_chunk_rows
    from labelfix.review.decisions import table_decisions

    if not known or not len(table):
        return issues, table, []
    decision = table_decisions(table, known)
    decided = decision.notna().to_numpy()
    if not decided.any():
        return issues, table, []
    labelset = run.labelset
    cls = labelset.class_columns().loc[table["category_id"].to_numpy()].to_numpy()
    is_add = (table["action"] == "add").to_numpy()
    accepted = decision[decided].astype(bool).to_numpy()
    weights = decision_weights(table["score"].to_numpy()[decided], is_add[decided], accepted, cls[decided],
                               labelset.num_classes)
    path = run.path / "cells" / "score.npy"
    given = labelset.labels
    old = load_npy(atomic.staged(path), mmap_mode="r")
    rows = default_chunk_rows(old.shape[1])
    with atomic.atomic_memmap(path, old.shape, np.float32) as out:
        for a in range(0, old.shape[0], rows):
            out[a:a + rows] = reweight_scores(old[a:a + rows], given[a:a + rows], weights)
    del old
    issues = dataclasses.replace(issues, score=load_npy(atomic.staged(path), mmap_mode="r"))
    table = table.copy()
    table["score"] = reweight_scores(table["score"].to_numpy(), np.where(is_add, 0, 1), weights, cls).astype(
        np.float64).round(6)
    table = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    parts = [f"{name}: {int(accepted[is_add[decided] == d].sum())} of {int((is_add[decided] == d).sum())} accepted"
             for name, d in (("additions", True), ("removals", False))]
    names = labelset.class_names
    lowest = np.argsort(weights, axis=None, kind="stable")[:3]
    scaled = [f"{('removals', 'additions')[j % 2]} of {names[j // 2]!r} x {weights.flat[j]:.2f}"
              for j in lowest if weights.flat[j] < 0.995]
    return issues, table, [
        f"learned from {int(decided.sum())} of your decisions on the suggestions this clean makes"
        f"{', before --classes / --max-suggestions' if filtered else ''} "
        f"({'; '.join(parts)}): scores "
        f"weighted per class and direction, {'lowest ' + ', '.join(scaled) if scaled else 'unchanged'} "
        f"(docs/review.md; --no-learn-from-decisions turns this off)"]


def _other_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The ``--with-run`` folders as runs; each once (a folder named twice, also through a
    link, would count twice in the mean)."""
    out, seen = [], {}
    for p in paths:
        try:
            other = Run(p)
        except LabelfixError as e:
            raise LabelfixError(f"--with-run: {e}") from None
        key = other.path.resolve()
        if key in seen:
            raise LabelfixError(f"{p}: --with-run names the same run twice (also as {seen[key]}); "
                                f"name every run once")
        seen[key] = p
        out.append(other)
    return out


#: RUN/cells/clean.json: the options of the run's last clean (the App's re-rank reuses them)
CLEAN_OPTIONS_FILE = "clean.json"
CLEAN_OPTIONS = ("clean_threshold", "relabel_threshold", "max_suggestions", "classes", "report", "scorer",
                 "neighbours", "single_positive_removals", "learn_from_decisions", "with_runs")


def last_clean_options(run: Run | str | Path) -> dict:
    """The keyword arguments of the run's last :func:`clean_run` (``cells/clean.json``;
    {} before the first), for running it again the same way."""
    import json

    run = run if isinstance(run, Run) else Run(run)
    path = run.path / "cells" / CLEAN_OPTIONS_FILE
    if not path.exists():
        return {}
    try:
        options = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise LabelfixError(f"{path}: corrupt JSON; re-run `labelfix clean {run.path}`") from None
    if not isinstance(options, dict) or set(options) - set(CLEAN_OPTIONS):
        raise LabelfixError(f"{path}: not the options of a labelfix clean; re-run `labelfix clean {run.path}`")
    return options


@dataclass
class CleanResult:
    issues: LabelIssues
    corrections: pd.DataFrame  # product.md schema
    notes: list[str]
    report: Path | None


def _stats_notes(run: Run) -> list[str]:
    state = run.stats_state
    notes = []
    if not state:
        notes.append("stats/state.json is missing: the statistics may come from an interrupted training run")
    elif not state.get("complete", False):
        notes.append(
            f"training did not finish: using the statistics of epoch {state.get('last_epoch', '?')} "
            f"({state.get('epochs_recorded', '?')} epochs recorded); `labelfix train --resume` continues it"
        )
    parent = run.path.parent.parent.parent   # RUN/folds/round<r>/fold<f>: one fold model of RUN
    if run.path.parent.parent.name == "folds" and (parent / "folds.npy").exists():
        notes.append(f"{run.path} is one fold model of the cross-fitted run {parent}: its statistics are out of "
                     f"sample only for the images of its own fold; `labelfix clean {parent}` judges every label by "
                     f"the fold model that did not train on it")
    elif state and not state.get("out_of_sample"):
        # docs/cleaning.md "The evidence": in-sample statistics rank the errors worse
        notes.append("in-sample statistics: the model judging each label trained on it and has partly learnt the "
                     "wrong ones; `labelfix train --folds 4` judges every label out of sample, which ranked the "
                     "label errors markedly better when the backbone trains (with --frozen the two are close)")
    return notes


def corrections_table(run: Run, corrections: pd.DataFrame) -> pd.DataFrame:
    """Turn the API's (image_index, class_index) rows into product.md's schema."""
    ls = run.labelset
    i = corrections["image_index"].to_numpy()
    k = corrections["class_index"].to_numpy()
    out = pd.DataFrame(
        {
            "image_id": ls.images["image_id"].to_numpy()[i],
            "file_name": take_labels(ls.images["file_name"].astype(str), i),
            "class": take_labels(ls.class_names, k),
            "category_id": ls.classes["category_id"].to_numpy()[k],
        }
    )
    for col in CORRECTIONS_COLUMNS[4:]:
        out[col] = corrections[col].values
    for col in ("score", "p_clean", "probability"):
        out[col] = out[col].astype(np.float64).round(6)
    return out[CORRECTIONS_COLUMNS]


def clean_run(
    run: Run | str | Path,
    *,
    clean_threshold: float = 0.5,
    relabel_threshold: float | None = None,
    max_suggestions: int | None = None,
    classes: Sequence[str] | None = None,
    report: bool = True,
    device: str = "cpu",
    scorer: str | None = None,
    neighbours: int = DEFAULT_K,
    single_positive_removals: bool = False,
    learn_from_decisions: bool = True,
    with_runs: Sequence[str | Path] = (),
) -> CleanResult:
    """Score every cell of a run and write ``cells/*.npy``, ``corrections.csv`` and
    ``report/`` into it.

    Args:
        run: the run directory.
        clean_threshold: p_clean above which a known cell is clean.
        relabel_threshold: delta of the two-view re-labeling (None: 0.975, or 0.55 in the
            single-positive setting).
        max_suggestions: keep the top suggestions only (after the class filter).
        classes: restrict the suggestions to these class names.
        report: write ``report/index.html`` and its plots.
        scorer: issue score rule (``labelfix.cleaning.scores.list_scorers()``; None: the default).
        neighbours: neighbours per image for the neighbour evidence (0: none).
        single_positive_removals: also suggest removing given positives of
            single-positive data (by default they are trusted).
        learn_from_decisions: when a person has decided some of this run's suggestions
            (accept column, the App's decisions.csv, the archive), weigh the scores per
            class and direction (addition / removal) by the share of each the person
            accepted (:func:`labelfix.cleaning.calibration.decision_weights`; docs/review.md).
            The App's decisions are read from RUN/decisions.csv as it is; the ``labelfix
            clean`` command first syncs it from the review dataset
            (:func:`labelfix.review.decisions.refresh_decisions`).
        with_runs: other run directories trained on the same labels: their held-out
            probabilities are averaged with this run's (:func:`run_evidence`).
    """
    run = run if isinstance(run, Run) else Run(run)
    ls = run.labelset
    from labelfix.review.decisions import check_decision_file, known_decisions

    # a reviewer's decisions are never dropped by a file clean cannot read: every decision
    # file is read (and checked) before anything is written; corrections.csv once
    old_corrections = check_decision_file(run)
    known = known_decisions(run, old_corrections)
    notes = _stats_notes(run)
    others = _other_runs(with_runs)
    evidence = run_evidence(run, others)
    rounds = judged_by_rounds(run)
    if rounds:
        refit = refit_loss(run)
        notes.append(f"known cells judged by the mean of the {rounds} rounds' held-out logits "
                     f"(pretrained backbone; docs/cleaning.md, 'Rounds as an ensemble')" if not refit else
                     f"cells judged by the mean of the {rounds} rounds' held-out logits (round 1 "
                     f"{run.config['train'].get('loss')}, then {refit}; docs/training.md, 'Choosing the loss')")
    if run.stat("loss_mean", required=False) is None:   # a damaged or hand-made run: say what replaces it
        notes.append(f"{run.path / 'stats' / 'loss_mean.npy'} is missing: the training dynamics (the loss over the "
                     f"epochs) are replaced by the BCE of the final logits"
                     + ("" if run.stats_state.get("out_of_sample") else " in the label GMMs")
                     + (" and in --score loss" if scorer == "loss" else ""))
    if scorer == "loss" and (run.config.get("train") or {}).get("dynamics") is False:
        notes.append("score loss: this run was trained with --no-dynamics, so its loss_mean is the last epoch's "
                     "held-out loss, not the mean over the epochs (docs/training.md)")
    if others:
        notes.append(f"model probabilities: the mean of this run's held-out logits and those of "
                     f"{', '.join(str(o.path) for o in others)}")
    if classes:
        unknown = sorted(set(classes) - set(ls.class_names))
        if unknown:
            raise LabelfixError(f"{run.path}: --classes: unknown class names {', '.join(unknown)}")
    # every output of this clean (cells/, corrections.csv, clean.json, report/) or none:
    # an interrupted or failed clean leaves the previous clean's set (docs/reliability.md)
    with atomic.output_set():
        return _score_and_write(
            run, evidence, notes, known, old_corrections, clean_threshold=clean_threshold,
            relabel_threshold=relabel_threshold, max_suggestions=max_suggestions, classes=classes, report=report,
            device=device, scorer=scorer, neighbours=neighbours, single_positive_removals=single_positive_removals,
            learn_from_decisions=learn_from_decisions, others=others)


def _score_and_write(run: Run, evidence: dict, notes: list[str], known: dict, old_corrections, *,
                     clean_threshold, relabel_threshold, max_suggestions, classes, report, device, scorer,
                     neighbours, single_positive_removals, learn_from_decisions, others) -> CleanResult:
    """The part of :func:`clean_run` that writes: scores, suggestions, report."""
    from labelfix.cleaning.evidence import duplicates_table, neighbour_votes
    from labelfix.cleaning.report import decision_estimate
    from labelfix.review.decisions import carry_decisions, keep_foreign_columns, table_decisions

    ls = run.labelset
    k_nb = neighbours
    neighbours, pairs = neighbour_votes(run, k=k_nb) if k_nb else (None, None)
    if k_nb and neighbours is None:   # a documented skip, not a silent one
        notes.append("no complete image embedding in the run (training interrupted before its end?): "
                     "neighbour evidence skipped, so the evidence score is the disagreement")
    elif neighbours is not None and not any(np.isfinite(neighbours[s:s + 65_536]).any()
                                            for s in range(0, len(neighbours), 65_536)):
        notes.append("no image got a neighbour vote (the run's embeddings have no finite row, or no neighbour "
                     "has a known label): neighbour evidence skipped, so the evidence score is the disagreement")
        neighbours, pairs = None, None
    if neighbours is None:   # no neighbour evidence in this clean: none of an earlier one stays beside it
        atomic.remove(run.path / "cells" / "neighbours.npy")
        atomic.remove(run.path / "cells" / "duplicates.csv")
    else:
        from labelfix.labels import positive_only

        dups = duplicates_table(run, pairs)
        if not get_scorer(scorer or DEFAULT_SCORER).uses_neighbours:   # only the duplicate groups serve
            neighbours = None
            atomic.remove(run.path / "cells" / "neighbours.npy")
        elif positive_only(ls.labels):
            # which cells are known depends on their value: a share over known cells would
            # measure the labelling, not the image (docs/cleaning.md, "Neighbour evidence")
            notes.append("neighbour votes not used: the labels are positive-only (most cells unknown, fewer known "
                         "negatives than positives), so the neighbours' known labels are positive by selection")
            neighbours = None
            atomic.remove(run.path / "cells" / "neighbours.npy")
        else:
            atomic.write_npy(run.path / "cells" / "neighbours.npy", neighbours.astype(np.float16))
        atomic.write_csv(run.path / "cells" / "duplicates.csv", dups)
        if len(dups):
            notes.append(f"{dups['group'].nunique()} groups of near-duplicate images "
                         f"({int((dups['conflicts'] != '').sum())} images in groups whose labels conflict, "
                         f"{int(dups['crosses_split'].sum())} in groups crossing the validation split); "
                         f"see cells/duplicates.csv")
    # a class without a known label in the rows the model trained on (validation rows are
    # not): its probabilities are the untrained output (about 0.5) and would fill the list
    from labelfix.labels import count_known

    split = run.split
    trained = np.flatnonzero(split != 1) if (split == 1).any() else None   # rows 2: each a fold model's training
    pos, neg = count_known(ls.labels, rows=trained)
    unlearned = np.flatnonzero((pos + neg) == 0)
    if unlearned.size:
        names = ls.classes["name"].to_numpy()[unlearned]
        where = " in the training rows" if trained is not None else ""
        notes.append(f"{unlearned.size} class(es) without a known label{where} ({', '.join(map(repr, names[:5]))}"
                     + (", ..." if unlearned.size > 5 else "") + "): the model had nothing to learn them from, so "
                     "their cells are not scored or suggested")
    issues = find_label_issues(
        **evidence,
        neighbours=neighbours,
        unscored_classes=unlearned if unlearned.size else None,
        scorer=scorer or DEFAULT_SCORER,
        single_positive_removals=single_positive_removals,
        clean_threshold=clean_threshold,
        relabel_threshold=relabel_threshold,
        out_dir=run.path / "cells",
        device=device,
    )
    notes += degenerate_group_notes(issues.gmms, ls.classes["name"].to_numpy())
    unscored, unranked = issues.settings["unscored_images"], issues.settings["unranked_cells"]
    if unscored and unscored == ls.num_images:   # raised inside the output set: nothing is written
        raise LabelfixError(f"{run.path / 'stats'}: the model's logits are NaN for every image, so no image was "
                            f"scored (a damaged stats/logits.npy, or training diverged); retrain the run")
    if unscored:
        lists = [str(r.path / "skipped_images.csv") for r in (run, *others)
                 if (r.path / "skipped_images.csv").exists()]
        where = f"listed in {', '.join(lists)}" if lists else "or a damaged stats file"
        notes.append(f"{unscored} images have cells the model did not score (NaN logits: images that could not "
                     f"be read, {where}): those cells keep their given label and are not suggested")
    if unranked:
        notes.append(f"{unranked} scored cells got no value from the score rule '{scorer or DEFAULT_SCORER}' "
                     f"(NaN in its input, e.g. stats/loss_mean.npy): score 0, so they rank last")
    table = corrections_table(run, issues.corrections)
    if learn_from_decisions:
        issues, table, note = _learn_from_decisions(run, issues, table, known,
                                                    filtered=bool(classes) or max_suggestions is not None)
        notes += note
    # from every decided suggestion, before --classes / --max-suggestions (as the learning)
    from_decisions = decision_estimate(table, table_decisions(table, known)) if known else None
    if from_decisions is not None:
        notes.append(from_decisions.attrs["note"])
    if classes:
        table = table[table["class"].isin(set(classes))]
    if max_suggestions is not None:
        table = table.head(max_suggestions)
    table = table.reset_index(drop=True)
    # the reviewer's accept column survives a re-run (docs/review.md, "Decisions across re-runs")
    table, kept = carry_decisions(run.path, table, old_corrections)
    notes += kept
    foreign = keep_foreign_columns(run.path)
    if foreign:
        notes.append(foreign)
    atomic.write_csv(run.path / "corrections.csv", table)
    atomic.write_json(run.path / "cells" / CLEAN_OPTIONS_FILE, dict(
        clean_threshold=clean_threshold, relabel_threshold=relabel_threshold, max_suggestions=max_suggestions,
        classes=list(classes) if classes else None, report=report, scorer=scorer, neighbours=k_nb,
        single_positive_removals=single_positive_removals, learn_from_decisions=learn_from_decisions,
        with_runs=[str(o.path.resolve()) for o in others]))
    report_path = None
    if report:
        from labelfix.cleaning.report import write_report

        report_path = write_report(run, issues, table, notes, losses=evidence["losses"],
                                   probs=evidence["probs"], from_decisions=from_decisions)
    elif (run.path / "report" / "index.html").exists():   # kept (the demo shows it after its re-ranks), named
        notes.append(f"{run.path / 'report'} is an earlier clean's report, not updated (--no-report): it "
                     f"describes the suggestions of that clean")
    return CleanResult(issues, table, notes, report_path)
