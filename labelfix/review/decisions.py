"""The reviewer's decisions: label tags ``accepted`` / ``rejected`` on the
``suggestions`` of the review dataset, and their copy in RUN/decisions.csv.

A suggestion carries at most one of the two tags: accepting removes ``rejected`` and
rejecting removes ``accepted``. ``clear`` removes both (back to "to review").
RUN/decisions.csv (columns :data:`DECISION_COLUMNS`, ``decision`` one of
``accepted`` / ``rejected`` / empty) is a snapshot of the current suggestions and their
decisions, rewritten atomically after every change made through labelfix; when the
review dataset is created afresh (deleted database, new machine) its decisions are
restored from it (``csv_decision``: the ``accept`` value of corrections.csv imported
last, so that an App decision made afterwards is not overwritten by the same value).

RUN/decisions_archive.csv (:data:`ARCHIVE_COLUMNS`) keeps the decisions of suggestions
that a new ``labelfix clean`` no longer makes (from the ``accept`` column, source
``corrections.csv``, or from the review dataset, source ``fiftyone``), one row per
(image_id, category_id, suggested), the latest kept. When the same change is suggested
again, clean writes the archived decision back into the ``accept`` column and review
tags the new suggestion with it. :func:`carry_decisions` is what ``labelfix clean``
calls before it writes corrections.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError, first_line
from labelfix.io import atomic
from labelfix.review.dataset import ACCEPTED, DECISION_TAGS, REJECTED, SUGGESTIONS, class_of

DECISIONS_FILE = "decisions.csv"
ARCHIVE_FILE = "decisions_archive.csv"
DECISION_COLUMNS = ["image_id", "file_name", "class", "category_id", "action", "score", "decision", "csv_decision",
                    "other_tags"]
ARCHIVE_COLUMNS = ["image_id", "file_name", "class", "category_id", "suggested", "action", "score", "decision",
                   "source"]
FRAME_COLUMNS = [
    "image_id", "file_name", "class", "category_id", "class_index", "given", "suggested",
    "action", "state", "score", "p_clean", "probability", "decision", "csv_decision", "other_tags", "label_id",
    "sample_id",
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


def other_tags(tags) -> str:
    """The label tags other than the decision tags, as the JSON list decisions.csv
    stores (``""`` for none): a tag may hold any character, a comma included."""
    import json

    rest = [str(t) for t in (tags or []) if t not in DECISION_TAGS]
    return json.dumps(rest, ensure_ascii=False) if rest else ""


def parse_other_tags(value, where: str) -> list[str]:
    """The tags of an ``other_tags`` cell (:func:`other_tags`); a cell that is not a JSON
    list of strings is one line naming ``where``."""
    import json

    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return []
    try:
        tags = json.loads(value)
    except (TypeError, ValueError):
        tags = None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise LabelfixError(f"{where}: other_tags {value!r} must be a JSON list of tags, e.g. [\"unsure\"], or empty")
    return [t for t in tags if t not in DECISION_TAGS]


def decisions_frame(collection, field: str = SUGGESTIONS) -> pd.DataFrame:
    """One row per suggestion in ``collection`` with its decision.

    Columns :data:`FRAME_COLUMNS`; ``decision`` is ``accepted``, ``rejected`` or ``""``
    (a suggestion tagged both ways by hand counts as undecided); ``other_tags`` the
    suggestion's other label tags (a reviewer's ``unsure``) as a JSON list, ``""`` when
    there are none (:func:`other_tags`). Rows are sorted by
    score (highest first), then image_id and class_index.
    """
    return _frame_and_both(collection, field)[0]


def _frame_and_both(collection, field: str) -> tuple[pd.DataFrame, int]:
    """``(frame, both)`` from one read of ``collection``: :func:`decisions_frame`'s frame
    and the number of its suggestions tagged both ``accepted`` and ``rejected``."""
    attrs = ["label", "class_name", "category_id", "class_index", "given", "suggested", "action", "state",
             "confidence", "p_clean", "probability", "tags", "csv_decision", "id"]
    if len(collection) == 0:
        return pd.DataFrame(columns=FRAME_COLUMNS), 0
    paths = ["id", "image_id", "file_name"] + [f"{field}.classifications.{a}" for a in attrs]
    values = collection.values(paths)
    sids, iids, fnames, per_attr = values[0], values[1], values[2], values[3:]
    rows, both = [], 0
    for s, (sid, iid, fname) in enumerate(zip(sids, iids, fnames)):
        labels = per_attr[0][s] or []
        for j in range(len(labels)):
            rec = {a: (per_attr[i][s] or [None] * len(labels))[j] for i, a in enumerate(attrs)}
            both += bool(rec["tags"] and ACCEPTED in rec["tags"] and REJECTED in rec["tags"])
            rows.append(
                {
                    "image_id": int(iid), "file_name": fname, "class": class_of(rec["label"], rec["class_name"]),
                    "category_id": int(rec["category_id"]), "class_index": int(rec["class_index"]),
                    "given": rec["given"], "suggested": int(rec["suggested"]), "action": rec["action"],
                    "state": rec["state"], "score": float(rec["confidence"]),
                    "p_clean": np.nan if rec["p_clean"] is None else float(rec["p_clean"]),
                    "probability": np.nan if rec["probability"] is None else float(rec["probability"]),
                    "decision": _decision(rec["tags"]), "csv_decision": str(rec["csv_decision"] or ""),
                    "other_tags": other_tags(rec["tags"]),
                    "label_id": str(rec["id"]), "sample_id": str(sid),
                }
            )
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    return frame.sort_values(["score", "image_id", "class_index"], ascending=[False, True, True],
                             kind="stable").reset_index(drop=True), both


def decision_counts(collection, field: str = SUGGESTIONS) -> dict[str, int]:
    """``{"accepted": a, "rejected": r}`` over the suggestions in ``collection``."""
    return _counts(decisions_frame(collection, field))


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    """:func:`decisions_frame`'s ``frame`` -> ``{"accepted": a, "rejected": r}``."""
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
    return _write_decisions(run, decisions_frame(dataset, field))


def sync_counts(dataset, run, field: str = SUGGESTIONS) -> tuple[dict[str, int], int]:
    """:func:`sync_decisions` (``run``: a Run) and :func:`decision_counts` of ``dataset``
    from one read of it: ``({"accepted": a, "rejected": r}, both)``, ``both`` the number of
    suggestions tagged both ways (undecided)."""
    frame, both = _frame_and_both(dataset, field)
    _write_decisions(run, frame)
    return _counts(frame), both


def _write_decisions(run, frame: pd.DataFrame) -> Path:
    """Write :func:`decisions_frame`'s ``frame`` (its :data:`DECISION_COLUMNS`) to
    RUN/decisions.csv atomically (``run``: a Run); returns the file's path."""
    out = run.path / DECISIONS_FILE
    atomic.write_csv(out, frame[DECISION_COLUMNS])
    return out


def refresh_decisions(run) -> str | None:
    """Bring RUN/decisions.csv up to date with the run's review dataset (the one
    RUN/review.json records), so that tags set with the App's tag button, which nothing
    copies, count as decisions for ``labelfix clean`` too.

    Returns None when the run has no review dataset (never reviewed) or the file was
    synced; else a one-line note saying why the file is used as it is (the dataset was
    deleted, the database does not start, it belongs to another run).
    """
    from labelfix.review.dataset import REVIEW_FILE, load_review_dataset, recorded_dataset_name, run_dataset_name
    from labelfix.run import Run, load_run

    if not (Path(run.path if isinstance(run, Run) else run) / REVIEW_FILE).exists():
        return None   # never reviewed: nothing to sync, and no run to load
    run = run if isinstance(run, Run) else load_run(run)
    kept = f"decisions read from {run.path / DECISIONS_FILE} as the last review or App operator left it"
    try:
        name = recorded_dataset_name(run)
    except LabelfixError as e:
        return f"{kept} ({e})"
    if name is None:
        return None
    try:
        import fiftyone as fo

        name, found = run_dataset_name(run)
        if not fo.dataset_exists(name):
            return f"{kept} (the review dataset {name!r} no longer exists)"
        sync_decisions(load_review_dataset(run, name), run)
    except LabelfixError as e:
        return f"{kept} ({e})"
    except Exception as e:   # noqa: BLE001 - no database here (another machine, a broken install)
        return f"{kept} (FiftyOne dataset {name!r} not readable: {type(e).__name__}: {first_line(e)})"
    return f"decisions synced from {found}" if found else None


def read_decisions_csv(run) -> pd.DataFrame | None:
    """RUN/decisions.csv as a DataFrame (None when the file does not exist)."""
    from labelfix.run import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    p = run.path / DECISIONS_FILE
    if not p.exists():
        return None
    from labelfix.validation import read_run_csv   # empty / non-UTF-8 / unparsable: one line
    frame = read_run_csv(p, dtype={"class": str, "file_name": str, "decision": str, "csv_decision": str,
                                   "other_tags": str})
    missing = {"image_id", "class", "decision"} - set(frame.columns)
    if missing:
        raise LabelfixError(f"{p}: missing columns {', '.join(sorted(missing))}")
    bad = ~frame["decision"].isin(["", *DECISION_TAGS])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelfixError(f"{p}: row {i + 2}: decision {frame['decision'].iloc[i]!r} must be accepted, rejected "
                            f"or empty")
    if "other_tags" in frame.columns:   # absent in files of earlier versions
        for i, v in enumerate(frame["other_tags"]):
            parse_other_tags(v, f"{p}: row {i + 2}")
    from labelfix.validation import check_decisions   # image ids, classes, category ids, one row per cell
    check_decisions(frame, p, run.labelset)
    return frame


def read_archive(run) -> dict[tuple[int, int, int], str]:
    """RUN/decisions_archive.csv as ``{(image_id, category_id, suggested): decision}``
    (empty when the file does not exist)."""
    frame = read_archive_frame(run)
    if frame is None:
        return {}
    return {
        (int(i), int(c), int(s)): d
        for i, c, s, d in zip(frame["image_id"], frame["category_id"], frame["suggested"], frame["decision"])
        if d in DECISION_TAGS
    }


def read_archive_frame(run) -> pd.DataFrame | None:
    """RUN/decisions_archive.csv (columns :data:`ARCHIVE_COLUMNS`, ids as int64), None
    when there is none; a file without the key columns is one line naming it."""
    path = Path(run.path if hasattr(run, "path") else run) / ARCHIVE_FILE
    if not path.exists():
        return None
    from labelfix.validation import read_run_csv

    frame = read_run_csv(path, dtype=str)
    missing = {"image_id", "category_id", "suggested", "decision"} - set(frame.columns)
    if missing:
        raise LabelfixError(f"{path}: missing columns {', '.join(sorted(missing))}")
    try:
        for col in ("image_id", "category_id", "suggested"):
            frame[col] = frame[col].astype(np.int64)
    except ValueError as e:
        raise LabelfixError(f"{path}: image_id, category_id and suggested must be integers ({e})") from None
    return frame


def archive_decisions(run, frame: pd.DataFrame) -> Path:
    """Add decided suggestions (columns :data:`ARCHIVE_COLUMNS`) to RUN/decisions_archive.csv,
    one row per (image_id, category_id, suggested), the newest kept. Written atomically."""
    path = Path(run.path if hasattr(run, "path") else run) / ARCHIVE_FILE
    old = read_archive_frame(run)
    new = frame.reindex(columns=ARCHIVE_COLUMNS).copy()
    for col in ("image_id", "category_id", "suggested"):
        new[col] = pd.to_numeric(new[col]).astype(np.int64)   # "1.0" from a spreadsheet too
    both = new if old is None else pd.concat([old.reindex(columns=ARCHIVE_COLUMNS), new], ignore_index=True)
    both = both.drop_duplicates(["image_id", "category_id", "suggested"], keep="last")
    both = both.sort_values(["image_id", "category_id", "suggested"], kind="stable")
    atomic.write_csv(path, both[ARCHIVE_COLUMNS])
    return path


def _accept_value(v) -> str:
    """A cell of the ``accept`` column -> accepted / rejected / "" (an unreadable value
    counts as a decision so that it is kept, not dropped)."""
    from labelfix.export.coco import _FALSE, _TRUE

    t = str(v).strip().lower()
    if t in _TRUE:
        return ACCEPTED
    if t in _FALSE:
        return REJECTED
    return "" if t in ("", "nan") else str(v)


def cell_key(image_id, category_id, suggested) -> tuple[int, int, int]:
    """``(image_id, category_id, suggested)`` as ints (CSV text such as ``526.0`` read by
    :func:`labelfix.validation.parse_int`, the parser of every CSV check): the key of a
    decision."""
    from labelfix.validation import parse_int

    return parse_int(image_id), parse_int(category_id), parse_int(suggested)


def check_decision_file(run) -> pd.DataFrame | None:
    """Refuse, before ``labelfix clean`` writes anything, a RUN/corrections.csv whose
    decisions it could not carry over: what ``export coco`` refuses (the schema checks of
    :func:`labelfix.review.dataset.suggestion_rows`, ``accept`` values other than
    1/0/true/false/yes/no/empty), and a column that is ``accept`` but for case or spaces
    (its decisions would be read as none). One line naming the file and the row.

    Returns its decided rows as text (``dtype=str``, non-empty ``accept``) when it holds an
    ``accept`` column, an empty frame when it holds none, None when there is no file:
    :func:`known_decisions` and :func:`carry_decisions` take them instead of reading the
    file again (it can hold millions of rows; only the decided ones are kept)."""
    from labelfix.review.dataset import suggestion_rows
    from labelfix.run import CORRECTIONS_REQUIRED, Run, load_run
    from labelfix.validation import check_corrections_header, may_hold_decisions, read_run_csv

    run = run if isinstance(run, Run) else load_run(run)
    path = run.path / "corrections.csv"
    if not path.exists():
        return None
    hint = "; fix it or move it away, then re-run clean (its decisions would be lost)"
    try:
        header = [str(c) for c in read_run_csv(path, nrows=0).columns]
    except LabelfixError as e:
        raise LabelfixError(f"{e}{hint}") from None
    if may_hold_decisions(header):   # accept, a column named like it, or a ';'-separated header
        try:
            check_corrections_header(header, path, CORRECTIONS_REQUIRED)
        except LabelfixError as e:
            raise LabelfixError(f"{e}{hint}") from None
    if "accept" not in header:
        return pd.DataFrame()   # no decision in it: clean replaces it, whatever else is wrong with it
    try:
        suggestion_rows(run)
        return _decided_rows(path, read_run_csv(path, dtype=str))
    except LabelfixError as e:
        raise LabelfixError(f"{e}{hint}") from None


def _decided_rows(path: Path, corrections: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows of corrections.csv (as text) with a non-empty ``accept``: from
    ``corrections`` when given (the file or its decided rows, as
    :func:`check_decision_file` returns them), else read from ``path``; None when there is
    no file or no ``accept`` column."""
    if corrections is None:
        if not path.exists():
            return None
        from labelfix.validation import read_run_csv   # a spreadsheet's byte-order mark is fine

        corrections = read_run_csv(path, dtype=str)
    if "accept" not in corrections.columns:
        return None
    empty = (corrections["accept"].astype(str).str.strip() == "").to_numpy()
    decided = corrections[~empty]
    if "cleared" not in corrections.attrs:   # (an already filtered frame keeps its set)
        decided.attrs["cleared"] = _cleared(corrections[empty], read_archive(path.parent))
    return decided


def _cleared(undecided: pd.DataFrame, archive: dict) -> set:
    """Keys of the archived decisions whose suggestion is in corrections.csv with an empty
    ``accept`` cell: clean wrote the decision back and a person cleared it, so it is no
    decision any more (before 2026-12-07 every clean restored it again)."""
    if not archive or not len(undecided):
        return set()
    # the archive is small, the file may hold millions of rows: only rows of archived images
    ids = pd.to_numeric(undecided["image_id"], errors="coerce").isin({k[0] for k in archive})
    out = set()
    for rec in undecided[ids.to_numpy()].to_dict("records"):
        try:
            k = cell_key(rec["image_id"], rec["category_id"], rec.get("suggested") or (rec.get("action") == "add"))
        except (KeyError, TypeError, ValueError):
            continue
        if k in archive:
            out.add(k)
    return out


#: where ``labelfix clean`` keeps the previous corrections.csv when a person added columns to it
PREVIOUS_FILE = "corrections.previous.csv"


def keep_foreign_columns(run_path) -> str | None:
    """Before ``labelfix clean`` rewrites RUN/corrections.csv: when a person added columns
    of their own to it (not product.md's schema, not ``accept``, e.g. a ``note``), copy the
    file to RUN/corrections.previous.csv (atomically; inside clean's output set) so that
    what they wrote is not lost with the rewrite. Returns the note saying so, else None."""
    import shutil

    from labelfix.io import atomic
    from labelfix.run import CORRECTIONS_COLUMNS
    from labelfix.validation import read_run_csv

    path = Path(run_path) / "corrections.csv"
    if not path.exists():
        return None
    header = [str(c) for c in read_run_csv(path, nrows=0).columns]
    foreign = [c for c in header if c not in (*CORRECTIONS_COLUMNS, "accept")]
    if not foreign:
        return None
    target = Path(run_path) / PREVIOUS_FILE
    with atomic.atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return (f"corrections.csv: column(s) {', '.join(repr(c) for c in foreign)} are not labelfix's and are not "
            f"written again" + (" (the accept column is carried over)" if "accept" in header else "")
            + f"; the previous file is kept as {target}")


def carry_decisions(run_path, table: pd.DataFrame,
                    corrections: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Keep the reviewer's ``accept`` column across a new ``labelfix clean``.

    ``table`` is the new corrections table about to be written to RUN/corrections.csv.
    Its rows get the ``accept`` value of the existing corrections.csv for the same
    (image_id, category_id, suggested), else the archived decision (written as ``yes`` /
    ``no``). Decided rows of the old file that are no longer suggested go to
    RUN/decisions_archive.csv. The column is added when the old file had one or when a
    decision was restored. Values are carried as written (``Yes`` stays ``Yes``).

    ``corrections``: the old file as text when already read (:func:`check_decision_file`).
    Returns ``(table, notes)``; the notes say what was kept, archived and restored.
    """
    run_path = Path(run_path)
    old_path = run_path / "corrections.csv"
    try:
        decided = _decided_rows(old_path, corrections)
    except LabelfixError as e:
        raise LabelfixError(f"{e}; its accept column cannot be kept: move the file away and re-run clean") from None
    archive = read_archive(run_path)
    if decided is not None:   # decisions a person cleared are not restored
        archive = {k: v for k, v in archive.items() if k not in decided.attrs.get("cleared", ())}
    has_accept = decided is not None
    if not has_accept and not archive:
        return table, []

    new_keys = list(map(cell_key, table["image_id"], table["category_id"], table["suggested"]))
    new_set = set(new_keys)
    carried: dict = {}
    lost = []
    if has_accept:
        for rec in decided.to_dict("records"):
            value = str(rec.get("accept", ""))
            try:
                k = cell_key(rec["image_id"], rec["category_id"],
                             rec.get("suggested") or (rec.get("action") == "add"))
            except (KeyError, TypeError, ValueError):
                k = None
            if k is not None:
                carried[k] = value
            if k is None or k not in new_set:
                lost.append(rec)
    out = table.copy()
    values, kept, restored = [], 0, 0
    for k in new_keys:
        if k in carried:
            values.append(carried[k])
            kept += 1
        elif k in archive:
            values.append("yes" if archive[k] == ACCEPTED else "no")
            restored += 1
        else:
            values.append("")
    notes = []
    if has_accept or restored:
        out["accept"] = values
    if kept:
        notes.append(f"kept {kept} decisions of the previous corrections.csv (accept column)")
    if restored:
        notes.append(f"restored {restored} decisions from {run_path / ARCHIVE_FILE} (the same change is suggested again)")
    if lost:
        frame = pd.DataFrame([
            {"image_id": r.get("image_id"), "file_name": r.get("file_name", ""), "class": r.get("class", ""),
             "category_id": r.get("category_id"),
             "suggested": r.get("suggested") or (1 if r.get("action") == "add" else 0),
             "action": r.get("action", ""), "score": r.get("score", ""), "decision": _accept_value(r["accept"]),
             "source": "corrections.csv"}
            for r in lost
        ])
        ok = pd.to_numeric(frame["image_id"], errors="coerce").notna() & pd.to_numeric(
            frame["category_id"], errors="coerce").notna()
        if (~ok).any():
            raise LabelfixError(f"{old_path}: a decided row has no valid image_id / category_id, so its decision "
                                "cannot be kept; fix or remove it and re-run clean")
        archive_decisions(run_path, frame)
        notes.append(f"{len(lost)} decisions of suggestions no longer made were kept in {run_path / ARCHIVE_FILE}")
    return out, notes


def table_decisions(table: pd.DataFrame, known: dict[tuple[int, int, int], bool]) -> pd.Series:
    """Per row of a corrections table (columns image_id, category_id, suggested), the
    decision of :func:`known_decisions` on it: True (accepted), False (rejected) or None
    (undecided); same index as ``table``."""
    out = pd.Series([None] * len(table), index=table.index, dtype=object)
    if not known or not len(table):
        return out
    cols = ["image_id", "category_id", "suggested"]
    keys = pd.MultiIndex.from_frame(table[cols].apply(pd.to_numeric).astype(np.int64))
    found = pd.Series(list(known.values()), index=pd.MultiIndex.from_tuples(list(known), names=cols),
                      dtype=object).reindex(keys).to_numpy()
    decided = pd.notna(found)
    out[decided] = found[decided]
    return out


def known_decisions(run, corrections: pd.DataFrame | None = None) -> dict[tuple[int, int, int], bool]:
    """Every decision a person made on a run's suggestions so far, read-only:
    ``{(image_id, category_id, suggested): accepted}``.

    Sources, newest last: RUN/decisions_archive.csv; the ``accept`` column of
    RUN/corrections.csv (the CSV workflow); RUN/decisions.csv (the App), whose decision
    wins unless the ``accept`` value was edited after it was imported (it differs from the
    row's ``csv_decision``). Unreadable ``accept`` values are not decisions here.
    ``corrections``: RUN/corrections.csv as text when already read (:func:`check_decision_file`).
    """
    from labelfix.run import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    decided = _decided_rows(run.path / "corrections.csv", corrections)   # undecided rows say nothing
    cleared = decided.attrs.get("cleared", ()) if decided is not None else ()
    out = {k: d == ACCEPTED for k, d in read_archive(run).items() if k not in cleared}
    accept: dict[tuple[int, int, int], str] = {}
    for rec in ([] if decided is None else decided.to_dict("records")):
        value = _accept_value(rec.get("accept", ""))
        try:
            k = cell_key(rec["image_id"], rec["category_id"], rec["suggested"])
        except (KeyError, TypeError, ValueError):
            continue
        if value in DECISION_TAGS:
            accept[k] = value
            out[k] = value == ACCEPTED
    app = read_decisions_csv(run)
    if app is not None and "category_id" in app.columns and "action" in app.columns:
        csv_dec = app["csv_decision"] if "csv_decision" in app.columns else pd.Series([""] * len(app))
        for i, c, a, d, imp in zip(app["image_id"], app["category_id"], app["action"], app["decision"], csv_dec):
            k = cell_key(i, c, 1 if a == "add" else 0)
            edited = k in accept and accept[k] != (imp if isinstance(imp, str) else "")
            if d in DECISION_TAGS and not edited:
                out[k] = d == ACCEPTED
    return out
