"""Build or update the persistent FiftyOne dataset that ``labelfix review`` opens.

Fields (product.md, "FiftyOne dataset written by review"):
- ``image_id`` (int), ``file_name`` (str): the run's image records; samples are matched
  to images by ``image_id``.
- ``ground_truth``: the given positives (Classifications).
- ``negatives``: the given explicit negatives (Classifications). Only written when the
  label matrix has unknown cells; in an exhaustive (plain COCO) dataset every absent
  class is negative, so the field would only repeat ``ground_truth``'s complement.
- ``predictions``: model probabilities sigmoid(stats/logits) as Classifications, each
  with a ``logit`` attribute, and the sample's full logit vector (K,) in
  ``predictions.logits``. At most ``max_predictions`` per sample (the most probable).
- ``suggestions``: one Classification per row of corrections.csv; confidence = score,
  attributes action, state, p_clean, probability, given, suggested, class_index,
  category_id. The reviewer's decision is the label tag ``accepted`` or ``rejected``.
- ``issue_score``: the largest suggestion score on the sample (0 without suggestions).
Saved views ``additions``, ``removals`` and ``to_review`` (suggestions tagged neither
accepted nor rejected), each sorted by ``issue_score`` (highest first). The App's
sidebar starts with ``ground_truth`` and ``suggestions`` shown (unless the dataset's
``app_config.active_fields`` was set already).

Re-running on the same dataset replaces the label fields but keeps every decision: a
suggestion whose (image_id, class) was suggested before keeps its label id and tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK
from labelfix.numeric import sigmoid
from labelfix.run import Run, load_run

ACCEPTED, REJECTED = "accepted", "rejected"
DECISION_TAGS = (ACCEPTED, REJECTED)
SUGGESTIONS = "suggestions"
SAVED_VIEWS = ("additions", "removals", "to_review")
REVIEW_FILE = "review.json"  # RUN/review.json: {"dataset": name}
DEFAULT_MAX_PREDICTIONS = 50


@dataclass
class ReviewSummary:
    """What :func:`build_review_dataset` produced."""

    name: str
    samples: int
    suggestions: int
    additions: int
    removals: int
    accepted: int
    rejected: int
    to_review: int
    restored_decisions: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_dataset_name(run: Run | str | Path) -> str:
    """``labelfix-<run folder name>-<6 hex digits of the run's absolute path>``
    (characters other than letters, digits, ``-_.`` replaced by ``-``): readable, and two
    runs whose folders share a name (``exp1/run``, ``exp2/run``) get their own datasets."""
    import hashlib

    run = run if isinstance(run, Run) else load_run(run)
    path = run.path.resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name).strip("-") or "run"
    return f"labelfix-{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def recorded_dataset_name(run: Run) -> str | None:
    """The dataset name recorded by the last ``labelfix review`` of this run, if any."""
    p = run.path / REVIEW_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())["dataset"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LabelfixError(f"{p}: corrupt review record (expected {{\"dataset\": NAME}})") from None


def _float_or_none(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f


def suggestion_rows(run: Run) -> pd.DataFrame:
    """corrections.csv with a ``row`` / ``col`` cell index per suggestion.

    Raises LabelfixError for rows naming an image or category the run does not have.
    """
    corr = run.corrections()
    p = run.path / "corrections.csv"
    ls = run.labelset
    missing = {"image_id", "class", "category_id", "action", "score"} - set(corr.columns)
    if missing:
        raise LabelfixError(f"{p}: missing columns {', '.join(sorted(missing))}")
    row_of, col_of = ls.image_rows(), ls.class_columns()
    try:
        image_ids = corr["image_id"].astype(np.int64).to_numpy()
        cat_ids = corr["category_id"].astype(np.int64).to_numpy()
        scores = corr["score"].astype(np.float64).to_numpy()
    except (ValueError, TypeError) as e:
        raise LabelfixError(f"{p}: image_id, category_id and score must be numbers ({e})") from None
    for name, ids, index in (("image_id", image_ids, row_of), ("category_id", cat_ids, col_of)):
        bad = ~np.isin(ids, index.index.to_numpy())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LabelfixError(f"{p}: row {i + 2}: unknown {name} {ids[i]} (not in the run)")
    bad = ~corr["action"].isin(["add", "remove"]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelfixError(f"{p}: row {i + 2}: action must be add or remove, got {corr['action'].iloc[i]!r}")
    out = corr.copy()
    out["image_id"], out["category_id"], out["score"] = image_ids, cat_ids, scores
    out["row"] = row_of.loc[image_ids].to_numpy()
    out["col"] = col_of.loc[cat_ids].to_numpy()
    dup = out.duplicated(["row", "col"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise LabelfixError(f"{p}: row {i + 2}: a second suggestion for image {image_ids[i]}, category {cat_ids[i]}")
    return out


def _suggestion(rec, name: str, keep: dict) -> "object":
    import fiftyone as fo
    from bson import ObjectId

    prev = keep.get((int(rec.image_id), name))
    kwargs = {}
    if prev is not None and prev[0] is not None:
        kwargs["_id"] = ObjectId(prev[0])
    return fo.Classification(
        label=name,
        confidence=float(rec.score),
        tags=list(prev[1]) if prev is not None else [],
        action=str(rec.action),
        state=str(getattr(rec, "state", "")),
        p_clean=_float_or_none(getattr(rec, "p_clean", None)),
        probability=_float_or_none(getattr(rec, "probability", None)),
        given=str(getattr(rec, "given", "")),
        suggested=int(rec.suggested) if str(getattr(rec, "suggested", "")).strip() != "" else (1 if rec.action == "add" else 0),
        class_index=int(rec.col),
        category_id=int(rec.category_id),
        **kwargs,
    )


def _existing_decisions(dataset) -> dict[tuple[int, str], tuple[str, list[str]]]:
    """{(image_id, class): (label_id, tags)} of the suggestions already in the dataset."""
    if len(dataset) == 0 or SUGGESTIONS not in dataset.get_field_schema():
        return {}
    ids, labels, lids, tags = dataset.values(
        ["image_id", f"{SUGGESTIONS}.classifications.label", f"{SUGGESTIONS}.classifications.id",
         f"{SUGGESTIONS}.classifications.tags"]
    )
    out = {}
    for iid, ls, li, ts in zip(ids, labels, lids, tags):
        for name, lid, t in zip(ls or [], li or [], ts or []):
            out[(int(iid), str(name))] = (str(lid), list(t or []))
    return out


def _csv_decisions(run: Run) -> dict[tuple[int, str], tuple[None, list[str]]]:
    """Decisions from RUN/decisions.csv (used when the dataset is created afresh)."""
    from labelfix.review.decisions import read_decisions_csv

    frame = read_decisions_csv(run)
    if frame is None:
        return {}
    return {
        (int(iid), str(cls)): (None, [dec])
        for iid, cls, dec in zip(frame["image_id"], frame["class"], frame["decision"])
        if dec in DECISION_TAGS
    }


def _saved_views(dataset) -> None:
    from fiftyone import ViewField as F

    decided = F("tags").contains(list(DECISION_TAGS))
    views = {
        "additions": (F("action") == "add", "Suggested additions (given label 0 or unknown -> 1), highest score first"),
        "removals": (F("action") == "remove", "Suggested removals (given 1 -> 0), highest score first"),
        "to_review": (~decided, "Suggestions not yet accepted or rejected, highest score first"),
    }
    for name, (expr, description) in views.items():
        view = dataset.filter_labels(SUGGESTIONS, expr).sort_by("issue_score", reverse=True)
        if dataset.has_saved_view(name):
            dataset.update_saved_view_info(name, {"description": description})
            dataset.save_view(name, view, description=description, overwrite=True)
        else:
            dataset.save_view(name, view, description=description)


def build_review_dataset(
    run: Run | str | Path,
    name: str | None = None,
    *,
    max_predictions: int | None = DEFAULT_MAX_PREDICTIONS,
    chunk_rows: int = 4096,
):
    """Create or update the persistent review dataset of ``run``.

    Args:
        run: the run directory (after ``labelfix clean``).
        name: dataset name; default :func:`default_dataset_name`.
        max_predictions: keep the ``max_predictions`` most probable classes per sample in
            ``predictions`` (None: all K). The full logit vector is kept either way.
        chunk_rows: images processed per batch.

    Returns:
        ``(dataset, ReviewSummary)``. Also writes RUN/review.json (the dataset name) and
        RUN/decisions.csv (:func:`labelfix.review.decisions.sync_decisions`).
    """
    from labelfix.review import enable_plugin

    run = run if isinstance(run, Run) else load_run(run)
    name = name or default_dataset_name(run)
    enable_plugin()
    import fiftyone as fo

    ls = run.labelset
    sugg = suggestion_rows(run)
    logits = run.stat("logits")
    n = ls.num_images
    class_names = ls.class_names
    run_path = str(run.path.resolve())

    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        other = ds.info.get("labelfix_run")
        if other and other != run_path:
            raise LabelfixError(
                f"{run.path}: dataset {name!r} belongs to another run ({other}); pass --name to choose another name"
            )
        keep = _existing_decisions(ds)
        restored = 0
        if not keep:
            keep = _csv_decisions(run)
            restored = len(keep)
    else:
        ds = fo.Dataset(name, persistent=True)
        keep = _csv_decisions(run)
        restored = len(keep)
    ds.info["labelfix_run"] = run_path
    ds.info["labelfix_classes"] = class_names
    ds.default_classes = class_names
    ds.save()

    # samples: one per image, matched by image_id; images no longer in the run are removed
    image_ids = ls.images["image_id"].to_numpy(np.int64)
    have = set(int(i) for i in ds.values("image_id")) if len(ds) and ds.has_field("image_id") else set()
    wanted = set(int(i) for i in image_ids)
    stale = have - wanted
    if stale:
        from fiftyone import ViewField as F

        ds.delete_samples(ds.match(F("image_id").is_in(sorted(stale))))
    new_rows = [r for r in range(n) if int(image_ids[r]) not in have]
    if new_rows:
        samples = []
        for r in new_rows:
            w, h = int(ls.images.at[r, "width"]), int(ls.images.at[r, "height"])
            samples.append(
                fo.Sample(
                    filepath=str(ls.image_path(r).resolve()),
                    image_id=int(image_ids[r]),
                    file_name=str(ls.images.at[r, "file_name"]),
                    metadata=fo.ImageMetadata(width=w, height=h) if w and h else None,
                )
            )
        ds.add_samples(samples, progress=False)

    explicit_negatives = bool(_any_unknown(ls.labels, chunk_rows))
    by_row = {r: g for r, g in sugg.groupby("row", sort=False)}
    gt, neg, pred, sug, score = {}, {}, {}, {}, {}
    for s in range(0, n, chunk_rows):
        lab = np.asarray(ls.labels[s : s + chunk_rows])
        lg = np.asarray(logits[s : s + chunk_rows], np.float32)
        prob = sigmoid(lg.astype(np.float64))
        for j in range(lab.shape[0]):
            r, iid = s + j, int(image_ids[s + j])
            gt[iid] = fo.Classifications(
                classifications=[fo.Classification(label=class_names[c]) for c in np.flatnonzero(lab[j] == POS)]
            )
            if explicit_negatives:
                neg[iid] = fo.Classifications(
                    classifications=[fo.Classification(label=class_names[c]) for c in np.flatnonzero(lab[j] == NEG)]
                )
            order = np.argsort(-prob[j], kind="stable")
            if max_predictions is not None:
                order = order[:max_predictions]
            pred[iid] = fo.Classifications(
                classifications=[
                    fo.Classification(label=class_names[c], confidence=float(prob[j, c]), logit=float(lg[j, c]))
                    for c in order
                ],
                logits=lg[j].astype(np.float64),
            )
            g = by_row.get(r)
            if g is None:
                sug[iid] = fo.Classifications(classifications=[])
                score[iid] = 0.0
            else:
                g = g.sort_values("score", ascending=False, kind="stable")
                sug[iid] = fo.Classifications(
                    classifications=[_suggestion(rec, class_names[int(rec.col)], keep) for rec in g.itertuples()]
                )
                score[iid] = float(g["score"].max())
    ds.set_values("ground_truth", gt, key_field="image_id")
    if explicit_negatives:
        ds.set_values("negatives", neg, key_field="image_id")
    elif ds.has_sample_field("negatives"):
        ds.delete_sample_field("negatives")
    ds.set_values("predictions", pred, key_field="image_id")
    ds.set_values(SUGGESTIONS, sug, key_field="image_id")
    ds.set_values("issue_score", score, key_field="image_id")
    _saved_views(ds)
    if ds.app_config.active_fields is None:
        # the App shows given labels and suggestions; predictions one click away
        ds.app_config.active_fields = fo.ActiveFields(paths=["ground_truth", SUGGESTIONS])
        ds.save()

    atomic.write_json(run.path / REVIEW_FILE, {"dataset": name})
    from labelfix.review.decisions import decision_counts, sync_decisions

    sync_decisions(ds, run)
    counts = decision_counts(ds)
    summary = ReviewSummary(
        name=name,
        samples=len(ds),
        suggestions=int(len(sugg)),
        additions=int((sugg["action"] == "add").sum()),
        removals=int((sugg["action"] == "remove").sum()),
        accepted=counts[ACCEPTED],
        rejected=counts[REJECTED],
        to_review=int(len(sugg)) - counts[ACCEPTED] - counts[REJECTED],
        restored_decisions=restored,
    )
    return ds, summary


def _any_unknown(labels, chunk_rows: int) -> bool:
    for s in range(0, labels.shape[0], chunk_rows):
        if (np.asarray(labels[s : s + chunk_rows]) == UNK).any():
            return True
    return False


def load_review_dataset(run: Run | str | Path, name: str | None = None):
    """The review dataset of ``run`` (``name``, else the recorded or default name)."""
    run = run if isinstance(run, Run) else load_run(run)
    name = name or recorded_dataset_name(run) or default_dataset_name(run)
    from labelfix.review import enable_plugin

    enable_plugin()
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise LabelfixError(f"{run.path}: FiftyOne dataset {name!r} not found; run `labelfix review {run.path}` first")
    return fo.load_dataset(name)
