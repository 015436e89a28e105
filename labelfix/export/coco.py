"""``labelfix export coco``: apply the reviewed corrections to the user's COCO JSON.

Rules of the output file (product.md, "Cleaned COCO JSON") are those of
:func:`labelfix.io.coco_write.rewrite_coco`. This module only decides WHICH suggested
changes are applied:

- decisions come from the review dataset in FiftyOne (label tags ``accepted`` /
  ``rejected`` on ``suggestions``), or, without FiftyOne, from an ``accept`` column
  added to RUN/corrections.csv by hand (``1/true/yes`` accept, ``0/false/no`` reject,
  empty = undecided; case-insensitive);
- ``decisions="accepted"``: the accepted suggestions only;
  ``decisions="all"``: every suggestion that is not rejected;
  ``decisions=("min-score", x)``: the accepted ones plus the undecided ones with
  ``score >= x``. A rejected suggestion is never applied. A rejected *addition* of an
  unknown cell is a person's word that the class is absent: the cell becomes a verified
  negative (``neg_category_ids``; action ``verify-negative`` in the change log), so the
  next round trains it as a negative instead of leaving it unknown.

Every decided suggestion (accepted or rejected) and every cell verified in an earlier
round is recorded as verified in the file (``labelfix.verified``), so the next round of
``labelfix train`` / ``clean`` on it trusts those cells.

Next to the cleaned file a change log (CSV, one row per applied change: image_id,
file_name, class, category_id, old, new, action, score) is written. Inputs are never
modified; outputs are written atomically and are byte-identical for identical inputs.
Label sources that are not COCO are converted with
:func:`labelfix.io.coco_write.labelset_to_coco` first (``ExportResult.converted``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, LabelfixWarning
from labelfix.io import atomic
from labelfix.io.coco import coco_labelset
from labelfix.labels import STATE_NAMES
from labelfix.run import Run, load_run

SOURCES = ("fiftyone", "csv")
MODES = ("accepted", "all", "min-score")
CHANGE_LOG_COLUMNS = ["image_id", "file_name", "class", "category_id", "old", "new", "action", "score"]
#: change-log action of an unknown cell whose suggested addition was rejected
VERIFY_NEGATIVE = "verify-negative"
_TRUE = {"1", "1.0", "true", "yes", "y"}   # 1.0 / 0.0: a spreadsheet's number format
_FALSE = {"0", "0.0", "false", "no", "n"}


@dataclass
class ExportResult:
    out: Path
    change_log: Path
    verified: int
    changes: int
    additions: int
    removals: int
    negatives: int
    source: str
    converted: bool
    archived: int = 0   # decisions applied from RUN/decisions_archive.csv
    decided: int = 0    # suggestions a person decided (accepted or rejected), the archive's included
    suggestions: int = 0   # the run's current suggestions
    notes: list = field(default_factory=list)


def parse_decisions(decisions) -> tuple[str, float | None]:
    """``"accepted"`` / ``"all"`` / ``("min-score", x)`` -> ``(mode, min_score)``."""
    if isinstance(decisions, str) and decisions in ("accepted", "all"):
        return decisions, None
    if isinstance(decisions, (tuple, list)) and len(decisions) == 2 and decisions[0] == "min-score":
        try:
            x = float(decisions[1])
        except (TypeError, ValueError):
            raise LabelfixError(f"min-score must be a number, got {decisions[1]!r}") from None
        if not np.isfinite(x):
            raise LabelfixError(f"min-score must be finite, got {x}")
        return "min-score", x
    raise LabelfixError(f"decisions must be 'accepted', 'all' or ('min-score', x), got {decisions!r}")


def parse_accept(values: pd.Series, where: str) -> pd.Series:
    """The ``accept`` column -> ``"accepted"`` / ``"rejected"`` / ``""``."""
    out = []
    for i, v in enumerate(values.astype(str).str.strip().str.lower()):
        if v in _TRUE:
            out.append("accepted")
        elif v in _FALSE:
            out.append("rejected")
        elif v in ("", "nan"):
            out.append("")
        else:
            raise LabelfixError(f"{where}: row {i + 2}: accept must be 1/0/true/false/yes/no/y/n or empty, got {v!r}")
    return pd.Series(out, index=values.index, dtype=object)


def decisions_from_csv(run: Run) -> pd.DataFrame:
    """corrections.csv with ``row``, ``col`` and ``decision`` (from its ``accept`` column;
    every suggestion undecided when the column is absent)."""
    from labelfix.review.dataset import suggestion_rows

    frame = suggestion_rows(run)
    if "accept" in frame.columns:
        frame["decision"] = parse_accept(frame["accept"], str(run.path / "corrections.csv"))
    else:
        frame["decision"] = ""
    return frame


def decisions_from_fiftyone(run: Run, dataset_name: str | None = None) -> pd.DataFrame:
    """The review dataset's suggestions with their decisions, with ``row`` / ``col``."""
    from labelfix.review.dataset import load_review_dataset
    from labelfix.review.decisions import decisions_frame

    ds = load_review_dataset(run, dataset_name)
    frame = decisions_frame(ds)
    frame["row"], frame["col"] = _cell_index(frame, run.labelset, f"dataset {ds.name!r}", "suggestion for ",
                                             f" {run.path}; re-run `labelfix review {run.path}`")
    return frame


def pending_accept_cells(run: Run, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of corrections.csv whose ``accept`` cell the review dataset's suggestions
    ``frame`` (:func:`decisions_from_fiftyone`) do not show, by the rule ``labelfix review``
    imports them with: a decided suggestion the dataset does not hold, or a cell whose
    value differs from the one the dataset imported last (``csv_decision``) and from the
    dataset's decision (edited or emptied since). Decisions the archive holds for a
    suggestion the dataset does not hold are left out (the export applies them anyway).
    Empty without corrections.csv or its ``accept`` column. Columns image_id, class,
    category_id, action, decision."""
    from labelfix.review.decisions import read_archive

    cols = ["image_id", "class", "category_id", "action", "decision"]
    if not (run.path / "corrections.csv").exists():   # the dataset is all there is
        return pd.DataFrame(columns=cols)
    csv = decisions_from_csv(run)
    if "accept" not in csv.columns:
        return csv.reindex(columns=cols).iloc[:0]
    key = ["image_id", "category_id", "action"]
    left = csv[cols].astype({"image_id": np.int64, "category_id": np.int64})
    right = frame[key + ["decision", "csv_decision"]].astype({"image_id": np.int64, "category_id": np.int64})
    m = left.merge(right, on=key, how="left", suffixes=("", "_ds"), indicator=True)
    absent = (m["_merge"] == "left_only").to_numpy()
    archive = read_archive(run)
    archived = np.array([archive.get((i, c, int(a == "add"))) == d
                         for i, c, a, d in zip(m["image_id"], m["category_id"], m["action"], m["decision"])], bool)
    edited = (m["decision"] != m["csv_decision"]) & (m["decision"] != m["decision_ds"])
    pending = (absent & (m["decision"] != "").to_numpy() & ~archived) | (~absent & edited.to_numpy())
    return m.loc[pending, cols].reset_index(drop=True)


def _cell_index(frame: pd.DataFrame, ls, where: str, what: str = "", tail: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int64 of ``frame``'s (image_id, category_id) in the run's label matrix;
    an id the run does not have is one line, ``{where}: {what}image I, category C is not in
    the run{tail}``."""
    row_of, col_of = ls.image_rows(), ls.class_columns()
    bad = ~frame["image_id"].isin(row_of.index) | ~frame["category_id"].isin(col_of.index)
    if bad.any():
        r = frame[bad].iloc[0]
        raise LabelfixError(f"{where}: {what}image {r.image_id}, category {r.category_id} is not in the run{tail}")
    return (row_of.loc[frame["image_id"].to_numpy()].to_numpy(),
            col_of.loc[frame["category_id"].to_numpy()].to_numpy())


def archived_decisions(run: Run, frame: pd.DataFrame) -> pd.DataFrame:
    """The decisions of RUN/decisions_archive.csv on cells ``frame`` (the current
    suggestions) does not hold, as rows like ``frame``'s: a person decided them and a later
    ``clean`` stopped suggesting them (``--max-suggestions``, the scores learnt from the
    decisions), so they are applied and verified like the current ones (before, they were
    dropped from the export and the next round could suggest them again)."""
    from labelfix.review.decisions import DECISION_TAGS, read_archive_frame

    arch = read_archive_frame(run)
    if arch is None:
        return frame.iloc[:0]
    arch = arch[arch["decision"].isin(DECISION_TAGS)]
    current = set(zip(frame["image_id"].astype(np.int64), frame["category_id"].astype(np.int64)))
    arch = arch[[cell not in current for cell in zip(arch["image_id"], arch["category_id"])]]
    arch = arch.drop_duplicates(["image_id", "category_id"], keep="last")
    ls = run.labelset
    rows, cols = _cell_index(arch, ls, str(run.path / "decisions_archive.csv"))
    return pd.DataFrame({
        "image_id": arch["image_id"].to_numpy(), "file_name": ls.images["file_name"].astype(str).to_numpy()[rows],
        "class": [ls.class_names[c] for c in cols], "category_id": arch["category_id"].to_numpy(),
        "action": np.where(arch["suggested"].to_numpy() == 1, "add", "remove"),
        "score": pd.to_numeric(arch["score"], errors="coerce").fillna(0.0).to_numpy(),
        "decision": arch["decision"].to_numpy(), "row": rows, "col": cols})


def select_changes(frame: pd.DataFrame, decisions) -> pd.DataFrame:
    """The suggestions to apply under ``decisions`` (see module docstring)."""
    mode, x = parse_decisions(decisions)
    dec = frame["decision"]
    if mode == "accepted":
        keep = dec == "accepted"
    elif mode == "all":
        keep = dec != "rejected"
    else:
        keep = (dec == "accepted") | ((dec == "") & (frame["score"].astype(float) >= x))
    return frame[keep.to_numpy()]


def rejected_additions(frame: pd.DataFrame) -> pd.DataFrame:
    """The rejected ``add`` suggestions, as changes to a negative (action
    :data:`VERIFY_NEGATIVE`); :func:`change_log` keeps those of unknown cells (a rejected
    addition of a given negative confirms it and changes nothing)."""
    rejected = frame[((frame["decision"] == "rejected") & (frame["action"] == "add")).to_numpy()]
    return rejected.assign(action=VERIFY_NEGATIVE)


def change_log(changes: pd.DataFrame, labels) -> pd.DataFrame:
    """One row per change that alters a cell: CHANGE_LOG_COLUMNS, sorted by score
    (highest first), then image_id, category_id. ``old`` / ``new`` use 1 / 0 / unknown;
    ``add`` sets 1, ``remove`` and :data:`VERIFY_NEGATIVE` set 0."""
    rows = changes["row"].to_numpy(np.int64)
    cols = changes["col"].to_numpy(np.int64)
    old = np.asarray(labels[rows, cols], np.int8) if len(rows) else np.zeros(0, np.int8)
    new = np.where(changes["action"].to_numpy() == "add", 1, 0).astype(np.int8)
    log = pd.DataFrame(
        {
            "image_id": changes["image_id"].to_numpy(np.int64),
            "file_name": changes["file_name"].astype(str).to_numpy(),
            "class": changes["class"].astype(str).to_numpy(),
            "category_id": changes["category_id"].to_numpy(np.int64),
            "old": [STATE_NAMES[int(v)] for v in old],
            "new": [STATE_NAMES[int(v)] for v in new],
            "action": changes["action"].to_numpy(),
            "score": changes["score"].astype(float).to_numpy(),
            "row": rows,
            "col": cols,
        }
    )
    log = log[old != new]
    return log.sort_values(["score", "image_id", "category_id"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)


def export_cleaned_coco(
    run: Run | str | Path,
    out: str | Path,
    *,
    decisions="accepted",
    source: str | None = None,
    dataset_name: str | None = None,
    change_log_path: str | Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the cleaned COCO JSON of ``run`` to ``out`` and its change log.

    Args:
        run: the run directory.
        out: the cleaned COCO JSON to write (must not be the source file).
        decisions: ``"accepted"``, ``"all"`` or ``("min-score", x)``.
        source: ``"fiftyone"`` or ``"csv"``; default: ``"fiftyone"`` when the run has been
            reviewed (RUN/review.json exists), else ``"csv"``.
        dataset_name: the review dataset (default: the one recorded by ``labelfix review``).
        change_log_path: default ``<out without .json>.changes.csv``.
        overwrite: replace ``out`` and the change log when they exist (False: refused;
            another run may train on the file).
    """
    from labelfix.io.coco_write import rewrite_coco, source_coco, with_image_root, write_coco
    from labelfix.review.dataset import REVIEW_FILE

    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out)
    from labelfix.io.outputs import change_log_for, check_outputs

    log_path = Path(change_log_path) if change_log_path else change_log_for(out)
    ls = run.labelset
    src_path = ls.source.get("path")
    # never an input, run state or each other; an existing file only with overwrite
    check_outputs({"--out": out, "--changes": log_path}, [src_path], runs=[run.path], overwrite=overwrite)
    explicit_source = source is not None
    if source is None:
        source = "fiftyone" if (run.path / REVIEW_FILE).exists() else "csv"
    if source not in SOURCES:
        raise LabelfixError(f"source must be one of {SOURCES}, got {source!r}")
    if dataset_name is not None and source != "fiftyone":
        raise LabelfixError(f"{run.path}: --name names the review dataset, but the decisions come from "
                            f"corrections.csv (no review.json, or --from csv)")
    parse_decisions(decisions)  # fail before any work

    frame = decisions_from_fiftyone(run, dataset_name) if source == "fiftyone" else decisions_from_csv(run)
    notes = []
    if source == "fiftyone":
        pending = pending_accept_cells(run, frame)
        if len(pending):   # accept cells set or changed after the dataset imported them
            first = pending.iloc[0]
            what = (f"{len(pending)} decisions in the accept column of {run.path / 'corrections.csv'} are not in "
                    f"the review dataset (set or changed after it was built; e.g. image {int(first['image_id'])} "
                    f"{first['class']!r}: {first['decision'] or 'cleared'})")
            if not explicit_source:   # the default would drop them from the file the next round trains on
                raise LabelfixError(f"{what}: `labelfix review {run.path}` brings them in, then export again "
                                    f"(or --from csv: the accept column, without decisions made only in the App)")
            notes.append(f"{what}: exported from the dataset as it is (--from fiftyone); `labelfix review "
                         f"{run.path}` brings them in")
    suggestions = len(frame)
    archived = archived_decisions(run, frame)
    if len(archived):
        frame = pd.concat([frame, archived], ignore_index=True)
    log = change_log(pd.concat([select_changes(frame, decisions), rejected_additions(frame)]), ls.labels)

    converted = not (ls.source.get("format") == "coco" and src_path)
    data = source_coco(ls)
    if not converted:   # (a conversion is made from the run's own labels)
        # a bench run's labels are the file's plus the benchmark's noise: its records only
        _check_source_unchanged(ls, data, src_path, labels="noise" not in ls.source)
    elif src_path and "noise" not in ls.source:
        notes += _check_converted_source_unchanged(run, ls, Path(src_path))
    new = np.array(ls.labels, dtype=np.int8)  # dense copy, N x K bytes
    new[log["row"].to_numpy(np.int64), log["col"].to_numpy(np.int64)] = np.where(log["new"] == "1", 1, 0)
    # a person's decisions are trusted from now on: accepted (the new label) and rejected
    # (the given label confirmed) cells, plus those verified in earlier rounds
    verified = ls.trusted().copy()
    decided = frame[frame["decision"] != ""]
    verified[decided["row"].to_numpy(np.int64), decided["col"].to_numpy(np.int64)] = True
    cleaned = rewrite_coco(data, ls, new, verified=verified)
    if ls.image_root is not None and ls.image_root.resolve() != out.resolve().parent:
        cleaned = with_image_root(cleaned, ls)
    write_coco(out, cleaned)
    atomic.write_csv(log_path, log[CHANGE_LOG_COLUMNS])
    return ExportResult(
        out=out,
        change_log=log_path,
        verified=int(verified.sum()),
        changes=int(len(log)),
        additions=int((log["action"] == "add").sum()),
        removals=int((log["action"] == "remove").sum()),
        negatives=int((log["action"] == VERIFY_NEGATIVE).sum()),
        source=source,
        converted=converted,
        archived=int(len(archived)),
        decided=int(len(decided)),
        suggestions=int(suggestions),
        notes=notes,
    )


#: rows compared at a time by :func:`_check_source_unchanged`
LABEL_CHUNK_ROWS = 65_536
_STATE_WORDS = {1: "positive", 0: "negative", -1: "unknown"}


def _check_source_unchanged(ls, data: dict, path: str, labels: bool = True) -> None:
    """The source COCO (``data``, read as the run read it) must still be the run's: the
    same images (ids, and file names as the reader spells them: images\\x.jpg and ./x.jpg
    are images/x.jpg and x.jpg) and categories (ids and names), since the decisions are
    about the run's (image, class) cells and a swapped name would write them onto another
    file or class; and, with ``labels``, the same labels and verified cells, since
    :func:`rewrite_coco` keeps a file's annotation only where the exported label is
    positive (a positive added to the file after training would be dropped without a
    word, and a removed one kept removed where a decision restores it)."""
    ids = {int(im["id"]) for im in data.get("images", [])}
    if ids != set(ls.images["image_id"].astype(np.int64).tolist()):
        raise LabelfixError(f"{path}: its images no longer match the run's images (the file changed after training)")
    cat = {int(c["id"]): str(c.get("name", "")) for c in data.get("categories", [])}
    if set(cat) != set(ls.classes["category_id"].astype(np.int64).tolist()):
        raise LabelfixError(f"{path}: its categories no longer match the run's classes (the file changed after training)")
    for cid, name in zip(ls.classes["category_id"].astype(np.int64), ls.classes["name"].astype(str)):
        # before the reader, which would only see a name taken twice
        if cat[int(cid)].strip() != name.strip():
            raise LabelfixError(f"{path}: category {int(cid)} is named {cat[int(cid)]!r}, the run's class {name!r} (the "
                                f"file changed after training)")
    with warnings.catch_warnings():   # the reader's notes were given when the run read the file
        warnings.simplefilter("ignore", LabelfixWarning)
        now = coco_labelset(data, path, images=ls.image_root, unlabeled=ls.source.get("unlabeled"))
    cols = pd.Index(now.classes["category_id"].astype(np.int64)).get_indexer(
        ls.classes["category_id"].astype(np.int64))
    rows = pd.Index(now.images["image_id"].astype(np.int64)).get_indexer(ls.images["image_id"].astype(np.int64))
    theirs_names = now.images["file_name"].astype(str).to_numpy()[rows]
    renamed = np.flatnonzero(theirs_names != ls.images["file_name"].astype(str).to_numpy())
    if renamed.size:
        r = int(renamed[0])
        raise LabelfixError(f"{path}: image {int(ls.images.at[r, 'image_id'])} is {theirs_names[r]!r}, the run's "
                            f"{str(ls.images.at[r, 'file_name'])!r} (the file changed after training)")
    if labels:
        _check_same_labels(ls, now, rows, cols, path)


def _check_converted_source_unchanged(run: Run, ls, path: Path) -> list[str]:
    """A source that is not COCO (a CSV, Open Images, a FiftyOne export) is written as a
    conversion of the run's labels, so an edit made to the file after training would be
    lost without a word: when the file was modified after the run saved its labels, read
    it again with the run's reading options and refuse labels that differ (one line with
    the count and the first cell, as for a COCO source). Returns a note when the file can
    no longer be read as the run read it (the export goes on from the run's labels)."""
    from labelfix.train.config import read_run_config
    from labelfix.train.data import labels_if_newer

    try:
        with warnings.catch_warnings():   # the reader's notes were given when the run read the file
            warnings.simplefilter("ignore", LabelfixWarning)
            now = labels_if_newer(read_run_config(run.path), path, run.path)
    except LabelfixError as err:
        return [f"{path} could not be read again to check it is unchanged since training ({err}); exported from "
                f"the run's labels"]
    if now is None or now.fingerprint() == ls.fingerprint():
        return []
    # lined up by file name and class name: rows sorted or columns moved are no edit
    ours = {"image": ls.images["file_name"].astype(str), "class": ls.classes["name"].astype(str)}
    theirs = {"image": now.images["file_name"].astype(str), "class": now.classes["name"].astype(str)}
    found = {}
    for what in ("image", "class"):
        found[what] = pd.Index(theirs[what]).get_indexer(ours[what])
        gone = ours[what].to_numpy()[found[what] < 0]
        added = sorted(set(theirs[what]) - set(ours[what]))
        if gone.size or added:
            change = f"the run's {what} {gone[0]!r} is not in it" if gone.size else f"it has a new {what} {added[0]!r}"
            raise LabelfixError(f"{path}: {change} (the file changed after training); the export would drop that "
                                f"edit: train on the file as it is now, or restore it")
    _check_same_labels(ls, now, found["image"], found["class"], str(path))
    return []


def _check_same_labels(ls, now, rows: np.ndarray, cols: np.ndarray, path: str) -> None:
    """Refuse when the file's labels or verified cells (``now``, its rows / columns
    ``rows`` / ``cols`` aligned to the run's) differ from the run's: one line with the
    count and the first cell."""
    their_labels = np.asarray(now.labels)
    verified = ls.verified is not None or now.verified is not None
    our_verified, their_verified = (ls.trusted(), now.trusted()) if verified else (None, None)
    count, first = 0, None
    for s in range(0, ls.num_images, LABEL_CHUNK_ROWS):
        part = slice(s, s + LABEL_CHUNK_ROWS)
        ours, theirs = np.asarray(ls.labels[part]), their_labels[rows[part]][:, cols]
        differ = ours != theirs
        if verified:
            differ |= our_verified[part] != their_verified[rows[part]][:, cols]
        count += int(differ.sum())
        if first is None and differ.any():
            r, k = np.argwhere(differ)[0]
            first = (s + int(r), int(k), int(theirs[r, k]), int(ours[r, k]))
    if first is None:
        return
    r, k, theirs, ours = first
    what = (f"{_STATE_WORDS[theirs]} in the file, {_STATE_WORDS[ours]} in the run's labels" if theirs != ours
            else "verified in one of them only")
    raise LabelfixError(f"{path}: {count} label(s) changed after training (first: image "
                        f"{int(ls.images.at[r, 'image_id'])} {str(ls.images.at[r, 'file_name'])!r}, class "
                        f"{str(ls.classes.at[k, 'name'])!r}: {what}); the export would drop or undo those edits: "
                        f"train on the file as it is now, or restore it")
