"""The reviewer's decisions: label tags ``accepted`` / ``rejected`` on the
``suggestions`` of the review dataset, and their copy in RUN/decisions.csv.

A suggestion carries at most one of the two tags: accepting removes ``rejected`` and
rejecting removes ``accepted``. ``clear`` removes both (back to "to review").
RUN/decisions.csv (columns :data:`DECISION_COLUMNS`, ``decision`` one of
``accepted`` / ``rejected`` / empty) is a snapshot of the current suggestions and their
decisions, rewritten atomically after every change made through labelfix; when the
review dataset is created afresh (deleted database, new machine) its decisions are
restored from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.review.dataset import ACCEPTED, DECISION_TAGS, REJECTED, SUGGESTIONS

DECISIONS_FILE = "decisions.csv"
DECISION_COLUMNS = ["image_id", "file_name", "class", "category_id", "action", "score", "decision"]
FRAME_COLUMNS = [
    "image_id", "file_name", "class", "category_id", "class_index", "given", "suggested",
    "action", "state", "score", "p_clean", "probability", "decision", "label_id", "sample_id",
]


def _target(collection, label_ids, field: str):
    if label_ids is None:
        return collection
    return collection.select_labels(ids=list(label_ids), fields=field)


def set_decision(collection, decision: str | None, label_ids=None, field: str = SUGGESTIONS) -> int:
    """Tag suggestions with ``decision`` (``"accepted"``, ``"rejected"`` or None to clear).

    Args:
        collection: a FiftyOne dataset or view; only the suggestions visible in it change
            (a view filtered to additions changes additions only).
        decision: the tag to set; the other decision tag is removed.
        label_ids: optional iterable of suggestion label ids to restrict to.
        field: the suggestions field.

    Returns:
        the number of suggestions the decision now applies to.
    """
    if decision is not None and decision not in DECISION_TAGS:
        raise LabelfixError(f"decision must be one of {DECISION_TAGS} or None, got {decision!r}")
    target = _target(collection, label_ids, field)
    count = int(target.count(f"{field}.classifications"))
    if count == 0:
        return 0
    target.untag_labels([t for t in DECISION_TAGS if t != decision], label_fields=[field])
    if decision is not None:
        target.tag_labels(decision, label_fields=[field])
    return count


def accept(collection, label_ids=None, field: str = SUGGESTIONS) -> int:
    """Mark the suggestions in ``collection`` (or the given label ids) accepted."""
    return set_decision(collection, ACCEPTED, label_ids, field)


def reject(collection, label_ids=None, field: str = SUGGESTIONS) -> int:
    """Mark the suggestions in ``collection`` (or the given label ids) rejected."""
    return set_decision(collection, REJECTED, label_ids, field)


def clear(collection, label_ids=None, field: str = SUGGESTIONS) -> int:
    """Remove the decision of the suggestions in ``collection`` (or the label ids)."""
    return set_decision(collection, None, label_ids, field)


def _decision(tags) -> str:
    tags = set(tags or [])
    if ACCEPTED in tags and REJECTED in tags:
        return ""  # contradictory tags set by hand in the App: undecided
    if ACCEPTED in tags:
        return ACCEPTED
    if REJECTED in tags:
        return REJECTED
    return ""


def decisions_frame(collection, field: str = SUGGESTIONS) -> pd.DataFrame:
    """One row per suggestion in ``collection`` with its decision.

    Columns :data:`FRAME_COLUMNS`; ``decision`` is ``accepted``, ``rejected`` or ``""``
    (a suggestion tagged both ways by hand counts as undecided). Rows are sorted by
    score (highest first), then image_id and class_index.
    """
    attrs = ["label", "category_id", "class_index", "given", "suggested", "action", "state",
             "confidence", "p_clean", "probability", "tags", "id"]
    if len(collection) == 0:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    paths = ["id", "image_id", "file_name"] + [f"{field}.classifications.{a}" for a in attrs]
    values = collection.values(paths)
    sids, iids, fnames, per_attr = values[0], values[1], values[2], values[3:]
    rows = []
    for s, (sid, iid, fname) in enumerate(zip(sids, iids, fnames)):
        labels = per_attr[0][s] or []
        for j in range(len(labels)):
            rec = {a: per_attr[i][s][j] for i, a in enumerate(attrs)}
            rows.append(
                {
                    "image_id": int(iid), "file_name": fname, "class": rec["label"],
                    "category_id": int(rec["category_id"]), "class_index": int(rec["class_index"]),
                    "given": rec["given"], "suggested": int(rec["suggested"]), "action": rec["action"],
                    "state": rec["state"], "score": float(rec["confidence"]),
                    "p_clean": np.nan if rec["p_clean"] is None else float(rec["p_clean"]),
                    "probability": np.nan if rec["probability"] is None else float(rec["probability"]),
                    "decision": _decision(rec["tags"]), "label_id": str(rec["id"]), "sample_id": str(sid),
                }
            )
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    return frame.sort_values(["score", "image_id", "class_index"], ascending=[False, True, True],
                             kind="stable").reset_index(drop=True)


def decision_counts(collection, field: str = SUGGESTIONS) -> dict[str, int]:
    """``{"accepted": a, "rejected": r}`` over the suggestions in ``collection``."""
    frame = decisions_frame(collection, field)
    return {t: int((frame["decision"] == t).sum()) for t in DECISION_TAGS}


def sync_decisions(dataset, run=None, field: str = SUGGESTIONS) -> Path:
    """Write the decisions of ``dataset`` to RUN/decisions.csv (atomically).

    ``run`` defaults to ``dataset.info["labelfix_run"]``. Returns the file's path.
    """
    from labelfix.run import Run, load_run

    if run is None:
        path = dataset.info.get("labelfix_run")
        if not path:
            raise LabelfixError(f"dataset {dataset.name!r}: no labelfix run recorded in info['labelfix_run']")
        run = load_run(path)
    run = run if isinstance(run, Run) else load_run(run)
    frame = decisions_frame(dataset, field)[DECISION_COLUMNS]
    out = run.path / DECISIONS_FILE
    atomic.write_csv(out, frame)
    return out


def read_decisions_csv(run) -> pd.DataFrame | None:
    """RUN/decisions.csv as a DataFrame (None when the file does not exist)."""
    from labelfix.run import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    p = run.path / DECISIONS_FILE
    if not p.exists():
        return None
    frame = pd.read_csv(p, dtype={"class": str, "file_name": str, "decision": str}, keep_default_na=False)
    missing = {"image_id", "class", "decision"} - set(frame.columns)
    if missing:
        raise LabelfixError(f"{p}: missing columns {', '.join(sorted(missing))}")
    bad = ~frame["decision"].isin(["", *DECISION_TAGS])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelfixError(f"{p}: row {i + 2}: decision must be accepted, rejected or empty")
    return frame
