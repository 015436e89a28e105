"""Build or update the persistent FiftyOne dataset that ``labelfix review`` opens.

Fields (docs/review.md, "Fields"; product.md's list plus ``detections``, and suggestion
labels that read "+ dog" / "- dog"):
- ``image_id`` (int), ``file_name`` (str): the run's image records; samples are matched
  to images by ``image_id``.
- ``ground_truth``: the given positives (Classifications).
- ``detections``: the boxes of the source COCO annotations (Detections, relative
  [x, y, w, h]), when the run was trained on a COCO file with boxes.
- ``negatives``: the given explicit negatives (Classifications). Only written when the
  label matrix has unknown cells; in an exhaustive (plain COCO) dataset every absent
  class is negative, so the field would only repeat ``ground_truth``'s complement.
- ``predictions``: the probabilities ``labelfix clean`` judged the cells with
  (sigmoid of ``labelfix.cleaning.clean_run.held_out_logits``) as Classifications, each
  with a ``logit`` attribute, and the sample's full logit vector (K,) in
  ``predictions.logits``. At most ``max_predictions`` per sample (the most probable).
- ``suggestions``: one Classification per row of corrections.csv, label ``"+ <class>"``
  for an addition and ``"- <class>"`` for a removal (coloured green / red by
  ``action``); confidence = score; attributes class_name, action, given, suggested,
  probability, score, state, p_clean, class_index, category_id, csv_decision. The
  reviewer's decision is the label tag ``accepted`` or ``rejected``.
- ``issue_score``: the largest suggestion score on the sample (0 without suggestions).
Saved views ``additions``, ``removals``, ``to_review`` (suggestions tagged neither
accepted nor rejected) and ``class-<name>`` for the :data:`CLASS_VIEWS` classes with the
most suggestions, each showing only its suggestions, sorted by the highest score among
them (highest first). The App's sidebar starts with ``ground_truth``, ``detections``,
``negatives`` and ``suggestions`` shown.

Decisions:
- re-running on the same dataset replaces the label fields but keeps every decision: a
  suggestion whose (image_id, class) was suggested before keeps its label id and tags;
- the ``accept`` column of corrections.csv is imported (values that changed since the
  last import, or were never imported, set the tag; see :func:`_plan_decisions`);
- decisions of suggestions that are no longer made go to RUN/decisions_archive.csv and
  come back if the same change is suggested again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.data.image import on_disk_name
from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK
from labelfix.numeric import sigmoid
from labelfix.run import Run, load_run

ACCEPTED, REJECTED = "accepted", "rejected"
DECISION_TAGS = (ACCEPTED, REJECTED)
SUGGESTIONS = "suggestions"
DETECTIONS = "detections"
SAVED_VIEWS = ("additions", "removals", "to_review")
CLASS_VIEWS = 5  # saved views class-<name> for the classes with the most suggestions
REVIEW_FILE = "review.json"  # RUN/review.json: {"dataset": name}
DEFAULT_MAX_PREDICTIONS = 50
ADD_PREFIX, REMOVE_PREFIX = "+ ", "- "
ADD_COLOR, REMOVE_COLOR = "#2ca02c", "#d62728"  # green additions, red removals
GIVEN_COLOR, NEGATIVES_COLOR = "#1f77b4", "#8c8c8c"  # given labels and boxes blue, negatives grey


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
    imported_decisions: int = 0  # set from corrections.csv's accept column this time
    archived_decisions: int = 0  # decisions of suggestions no longer made -> decisions_archive.csv
    boxes: int = 0  # source COCO boxes in the detections field
    views: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def suggestion_label(class_name: str, action: str) -> str:
    """The label text of a suggestion: ``"+ dog"`` (add) or ``"- dog"`` (remove)."""
    return (ADD_PREFIX if action == "add" else REMOVE_PREFIX) + str(class_name)


def class_of(label: str, class_name=None) -> str:
    """The class of a suggestion label: its ``class_name`` attribute, else the label
    without its ``+ `` / ``- `` prefix (datasets written before labels had one)."""
    if class_name:
        return str(class_name)
    label = str(label)
    return label[2:] if label[:2] in (ADD_PREFIX, REMOVE_PREFIX) else label


def default_dataset_name(run: Run | str | Path) -> str:
    """``labelfix-<run folder name>-<6 hex digits of the run's absolute path>``
    (characters other than letters, digits, ``-_.`` replaced by ``-``): readable, and two
    runs whose folders share a name (``exp1/run``, ``exp2/run``) get their own datasets."""
    run = run if isinstance(run, Run) else load_run(run)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.path.resolve().name).strip("-") or "run"
    return f"labelfix-{stem}-{_path_digest(run)[:6]}"


def run_tag(run: Run) -> str:
    """The dataset tag ``labelfix-run-<12 hex digits of the run's absolute path>`` that
    marks a run's review dataset, so that it is found after a rename."""
    return f"labelfix-run-{_path_digest(run)[:12]}"


def _path_digest(run: Run) -> str:
    return hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()


def run_dataset_name(run: Run, name: str | None = None) -> tuple[str, str | None]:
    """``(name, note)``: the review dataset of ``run``. ``name`` when given; else the one
    RUN/review.json records (before, a review without --name went back to the default
    name and overwrote decisions.csv with that dataset's tags) when it exists; else the
    one dataset tagged :func:`run_tag` (renamed in Python since; ``note`` names it; two are
    refused: pass a name); else the recorded or the default name (created afresh)."""
    import fiftyone as fo

    if name is not None:
        return name, None
    recorded = recorded_dataset_name(run)
    if recorded is not None and fo.dataset_exists(recorded):
        return recorded, None
    tagged = fo.list_datasets(tags=run_tag(run))
    if len(tagged) > 1:
        raise LabelfixError(f"{run.path}: datasets {', '.join(map(repr, tagged))} all belong to this run; "
                            f"pass --name to choose one")
    if tagged:
        return tagged[0], (f"dataset {tagged[0]!r}, found by this run's tag"
                           + (f" ({run.path / REVIEW_FILE} named {recorded!r}, which no longer exists)"
                              if recorded else ""))
    return recorded or default_dataset_name(run), None


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
    """corrections.csv with a ``row`` / ``col`` cell index per suggestion, and a
    ``decision`` column (``accepted`` / ``rejected`` / ``""``) when it has an ``accept``
    column.

    Raises LabelfixError (one line naming the file and the row) for rows naming an image
    or category the run does not have, or whose file name / class does not match the
    run's (a corrections.csv copied from another run; :meth:`Run.corrections` checks
    those), and for bad ``accept`` values.
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
    if "accept" in out.columns:
        from labelfix.export.coco import parse_accept

        out["decision"] = parse_accept(out["accept"], str(p)).to_numpy()
    return out


@dataclass
class _Prev:
    """A decision known before this build: from the dataset, decisions.csv or the archive."""

    label_id: str | None
    tags: list[str]
    csv_decision: str = ""
    category_id: int | None = None
    file_name: str = ""
    action: str = ""
    suggested: int | None = None
    score: float | None = None


def _decision_of(tags) -> str:
    tags = set(tags or [])
    if ACCEPTED in tags and REJECTED in tags:
        return ""
    return ACCEPTED if ACCEPTED in tags else REJECTED if REJECTED in tags else ""


def _existing_decisions(dataset) -> dict[tuple[int, str], _Prev]:
    """{(image_id, class): _Prev} of the suggestions already in the dataset."""
    if len(dataset) == 0 or SUGGESTIONS not in dataset.get_field_schema():
        return {}
    attrs = ["label", "id", "tags", "class_name", "csv_decision", "category_id", "action", "suggested", "confidence"]
    values = dataset.values(["image_id", "file_name"] + [f"{SUGGESTIONS}.classifications.{a}" for a in attrs])
    out = {}
    for s, (iid, fname) in enumerate(zip(values[0], values[1])):
        per = [v[s] or [] for v in values[2:]]
        for j in range(len(per[0])):
            a = {name: (per[i][j] if j < len(per[i]) else None) for i, name in enumerate(attrs)}
            out[(int(iid), class_of(a["label"], a["class_name"]))] = _Prev(
                str(a["id"]), list(a["tags"] or []), str(a["csv_decision"] or ""),
                None if a["category_id"] is None else int(a["category_id"]), str(fname or ""), str(a["action"] or ""),
                None if a["suggested"] is None else int(a["suggested"]), _float_or_none(a["confidence"]),
            )
    return out


def _csv_decisions(run: Run) -> dict[tuple[int, str], _Prev]:
    """Decisions from RUN/decisions.csv (used when the dataset is created afresh)."""
    from labelfix.review.decisions import parse_other_tags, read_decisions_csv

    frame = read_decisions_csv(run)
    if frame is None:
        return {}
    blank = pd.Series([""] * len(frame))
    out = {}
    for iid, cls, dec, cd, cat, fname, action, score, other in zip(
        frame["image_id"], frame["class"], frame["decision"], frame.get("csv_decision", blank),
        frame.get("category_id", pd.Series([None] * len(frame))), frame.get("file_name", blank),
        frame.get("action", blank), frame.get("score", pd.Series([None] * len(frame))), frame.get("other_tags", blank),
    ):
        other = parse_other_tags(other, "decisions.csv")   # checked by read_decisions_csv
        if dec not in DECISION_TAGS and not cd and not other:
            continue
        out[(int(iid), str(cls))] = _Prev(
            None, other + ([dec] if dec in DECISION_TAGS else []), str(cd or ""),
            None if cat in (None, "") else int(cat), str(fname or ""), str(action or ""),
            (1 if action == "add" else 0) if action in ("add", "remove") else None, _float_or_none(score),
        )
    return out


def _merge_known(keep: dict, saved: dict, switched: bool) -> tuple[dict, set, int]:
    """What a build starts from: the dataset's suggestions ``keep`` and decisions.csv's
    ``saved`` (both ``{(image_id, class): _Prev}``) -> ``(keep, restores, differ)``.

    decisions.csv brings back what the dataset does not hold: all of it for a dataset
    created afresh (``keep`` empty), else the tagged suggestions whose sample or label was
    deleted from it (before, their decisions were overwritten with nothing); the dataset's
    tags win. After a ``switched`` dataset name, decisions.csv holds the previous dataset's
    decisions: they also go to the suggestions this one left undecided (with their
    imported ``accept`` value); ``differ`` counts those both decided differently (this
    dataset's tags win). ``restores``: the keys whose decision came from decisions.csv.
    """
    restores = {k for k, prev in saved.items() if k not in keep and (not keep or prev.tags)}
    keep, differ = dict(keep), 0
    if switched:
        undecided = {k for k, prev in saved.items()
                     if k in keep and _decision_of(prev.tags) and not _decision_of(keep[k].tags)}
        differ = sum(1 for k, prev in saved.items() if k in keep and _decision_of(keep[k].tags)
                     and _decision_of(prev.tags) and _decision_of(prev.tags) != _decision_of(keep[k].tags))
        for k in undecided:
            keep[k] = replace(keep[k], tags=[t for t in keep[k].tags if t not in DECISION_TAGS]
                              + [_decision_of(saved[k].tags)], csv_decision=saved[k].csv_decision)
        restores |= undecided
    return {**{k: saved[k] for k in restores if k not in keep}, **keep}, restores, differ


def _plan_decisions(sugg: pd.DataFrame, class_names: list[str], keep: dict, archive: dict, restores: set):
    """The label id, tags and imported CSV value of every suggestion, in ``sugg`` order.

    - a suggestion known before (``keep``: same image_id and class) keeps its label id,
      tags and last imported ``accept`` value;
    - a new one gets the decision archived for the same (image_id, category_id,
      suggested), if any;
    - where corrections.csv has an ``accept`` column, a value that differs from the one
      imported last time (or was never imported) sets the decision (an emptied cell
      clears it); a value already imported leaves the tags alone, so a later change in
      the App is kept.

    Returns ``(plan, counts, gone)``: plan[i] = (label_id | None, tags, csv_decision);
    counts ``imported`` / ``restored`` (from decisions.csv for the ``keep`` keys in ``restores``, or
    from the archive) and ``overridden`` (one line per decision of the dataset that an
    edited ``accept`` cell changed); gone = the decided ``keep`` entries no longer
    suggested, as ``[(image_id, class, _Prev)]``.
    """
    has_csv = "decision" in sugg.columns
    csv_values = sugg["decision"].to_numpy() if has_csv else [None] * len(sugg)
    plan, imported, restored, seen, overridden = [], 0, 0, set(), []
    for rec, v in zip(sugg.itertuples(index=False), csv_values):
        key = (int(rec.image_id), class_names[int(rec.col)])
        seen.add(key)
        prev = keep.get(key)
        if prev is not None:
            lid, tags, imp = prev.label_id, list(prev.tags), prev.csv_decision
            back = bool(key in restores and _decision_of(tags))
        else:
            lid, tags, imp = None, [], ""
            old = archive.get((int(rec.image_id), int(rec.category_id), 1 if rec.action == "add" else 0))
            if has_csv and not v:   # clean writes an archived decision back: an empty cell is a cleared one
                old = None
            back = bool(old)
            if old:
                tags = [old]
                if has_csv and v == old:   # clean wrote the archived decision into the accept column
                    imp = v                # (counted once, as restored)
        if has_csv and v != imp:
            if _decision_of(tags) and _decision_of(tags) != v:   # the edited cell wins; named
                overridden.append(f"image {key[0]} {key[1]!r}: {_decision_of(tags)} -> {v or 'undecided'}")
            tags = [t for t in tags if t not in DECISION_TAGS] + ([v] if v else [])
            imp = v
            imported += 1
            back = False   # the decision is the imported one: counted once
        restored += back
        plan.append((lid, tags, imp))
    gone = [(iid, cls, prev) for (iid, cls), prev in keep.items()
            if (iid, cls) not in seen and _decision_of(prev.tags)]
    return plan, {"imported": imported, "restored": restored, "overridden": overridden}, gone


def _suggestion(rec, name: str, plan_item) -> "object":
    import fiftyone as fo
    from bson import ObjectId

    lid, tags, csv_decision = plan_item
    kwargs = {"_id": ObjectId(lid)} if lid is not None else {}
    action = str(rec.action)
    return fo.Classification(
        label=suggestion_label(name, action),
        confidence=float(rec.score),
        tags=list(tags),
        class_name=name,
        action=action,
        given=str(getattr(rec, "given", "")),
        suggested=int(rec.suggested) if str(getattr(rec, "suggested", "")).strip() != "" else (1 if action == "add" else 0),
        probability=_float_or_none(getattr(rec, "probability", None)),
        score=float(rec.score),
        state=str(getattr(rec, "state", "")),
        p_clean=_float_or_none(getattr(rec, "p_clean", None)),
        class_index=int(rec.col),
        category_id=int(rec.category_id),
        csv_decision=csv_decision,
        **kwargs,
    )


def _source_boxes(ls, notes: list[str]) -> dict[int, list] | None:
    """{image_id: [fo.Detection]} from the boxes of the run's source COCO file (relative
    [x, y, w, h]; image sizes from the COCO image records, else the image file), or None
    when the labels did not come from a COCO file with boxes."""
    if ls.source.get("format") != "coco" or not ls.source.get("path"):
        return None
    path = Path(ls.source["path"])
    if not path.exists():
        notes.append(f"{path}: the run's source COCO file is gone; the original boxes are not shown")
        return None
    import fiftyone as fo

    from labelfix.io.coco import load_json

    data = load_json(path)
    row_of = {int(i): r for r, i in enumerate(ls.images["image_id"].to_numpy(np.int64))}
    cat_name = {int(c): str(n) for c, n in zip(ls.classes["category_id"], ls.class_names)}
    sizes: dict[int, tuple[int, int] | None] = {}
    out: dict[int, list] = {}
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict):
            continue
        box, iid, cid = ann.get("bbox"), ann.get("image_id"), ann.get("category_id")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and iid in row_of and cid in cat_name):
            continue
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            continue
        if not (w > 0 and h > 0):
            continue
        if iid not in sizes:
            sizes[iid] = ls.image_size(row_of[iid])
        size = sizes[iid]
        if size is None:
            continue
        iw, ih = size
        det = fo.Detection(label=cat_name[cid], bounding_box=[x / iw, y / ih, w / iw, h / ih])
        if "id" in ann:
            det["annotation_id"] = ann["id"]
        if ann.get("iscrowd"):
            det["iscrowd"] = int(ann["iscrowd"])
        out.setdefault(int(iid), []).append(det)
    return out or None


def _view_slug(name: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", str(name).lower())).strip("-")


def class_view_names(sugg: pd.DataFrame, class_names: list[str], top: int = CLASS_VIEWS) -> dict[str, int]:
    """``{"class-<slug>": class_index}`` for the ``top`` classes with the most
    suggestions (ties: lower class index first). The slug keeps ``a-z0-9`` of the
    lower-cased name (other runs of characters become ``-``), so the names are valid
    FiftyOne saved-view names; ``class-<index>`` where that leaves nothing or collides."""
    if not len(sugg) or top <= 0:
        return {}
    counts = sugg.groupby("col").size()
    order = sorted(counts.index, key=lambda c: (-int(counts[c]), int(c)))[:top]
    out: dict[str, int] = {}
    for c in order:
        slug = _view_slug(class_names[int(c)])
        name = f"class-{slug}" if slug else f"class-{int(c)}"
        if name in out or name in SAVED_VIEWS:
            name = f"class-{int(c)}-{slug}".rstrip("-")
        out[name] = int(c)
    return out


def _stages(view) -> list[dict]:
    """A view's stages without their random ids (to tell whether a saved view changed)."""
    return [{k: v for k, v in stage.items() if k != "_uuid"} for stage in view._serialize()]


def _saved_views(dataset, class_views: dict[str, int], class_names: list[str], notes: list[str]) -> list[str]:
    from fiftyone import ViewField as F

    # decided: one of the two tags; a label tagged both ways is undecided (decisions_frame)
    # and stays in to_review
    accepted, rejected = F("tags").contains(ACCEPTED), F("tags").contains(REJECTED)
    decided = (accepted & ~rejected) | (rejected & ~accepted)
    views = {
        "additions": (F("action") == "add", "Suggested additions (+ class: given 0 or unknown -> 1), highest score first"),
        "removals": (F("action") == "remove", "Suggested removals (- class: given 1 -> 0), highest score first"),
        "to_review": (~decided, "Suggestions not yet accepted or rejected, highest score first"),
    }
    for name, k in class_views.items():
        views[name] = (F("class_index") == k, f"Suggestions for class {class_names[k]}, highest score first")
    # sort by the best score among the suggestions the view shows, then image_id
    best = F(f"{SUGGESTIONS}.classifications").map(F("confidence")).max()
    ours = set(dataset.info.get("labelfix_class_views") or [])
    made = []
    for name, (expr, description) in views.items():
        if name in class_views and dataset.has_saved_view(name) and name not in ours:
            notes.append(f"saved view {name!r} exists and was not made by labelfix; left alone")
            continue
        view = dataset.filter_labels(SUGGESTIONS, expr).sort_by([(best, -1), ("image_id", 1)])
        if not dataset.has_saved_view(name):
            dataset.save_view(name, view, description=description)
        elif (_stages(dataset.load_saved_view(name)) != _stages(view)
              or dataset.get_saved_view_info(name).get("description") != description):
            dataset.save_view(name, view, description=description, overwrite=True)
        made.append(name)
    for name in sorted(ours - set(class_views)):  # class views of classes no longer on top
        if dataset.has_saved_view(name):
            dataset.delete_saved_view(name)
    mine = [n for n in made if n in class_views]
    if dataset.info.get("labelfix_class_views") != mine:
        dataset.info["labelfix_class_views"] = mine
        dataset.save()
    return made


def color_fields(class_names: list[str], suggested_classes: list[str], negatives: bool, boxes: bool) -> list[dict]:
    """The App colour scheme's per-field settings: suggestions green ("+ dog") and red
    ("- dog"), given labels and boxes blue, negatives grey. The App colours the grid's
    label pills by label text (``valueColors``; colouring by the ``action`` attribute is
    not applied to grid pills), so every label value is listed."""

    def field(path, values, color):
        return {"path": path, "colorByAttribute": "label",
                "valueColors": [{"value": v, "color": color} for v in values]}

    fields = [field("ground_truth", class_names, GIVEN_COLOR)]
    if boxes:
        fields.append(field(DETECTIONS, class_names, GIVEN_COLOR))
    if negatives:
        fields.append(field("negatives", class_names, NEGATIVES_COLOR))
    fields.append({
        "path": SUGGESTIONS,
        "colorByAttribute": "label",
        "valueColors": [{"value": suggestion_label(c, a), "color": ADD_COLOR if a == "add" else REMOVE_COLOR}
                        for c in suggested_classes for a in ("add", "remove")],
    })
    return fields


def _app_config(ds, active: list[str], fields: list[dict]) -> None:
    """Sidebar fields shown, and colours (:func:`color_fields`). Settings the user changed
    in the App are left alone; unchanged settings are not rewritten (a re-run changes
    nothing)."""
    import fiftyone as fo

    changed = False
    previous = ds.info.get("labelfix_active_fields")
    current = ds.app_config.active_fields
    current_paths = None if current is None else list(current.paths or [])
    if (current is None or current_paths == previous) and current_paths != active:
        ds.app_config.active_fields = fo.ActiveFields(paths=active)
        ds.info["labelfix_active_fields"] = active
        changed = True
    scheme = ds.app_config.color_scheme
    ours = ds.info.get("labelfix_color_scheme")
    if scheme is None or ours:
        if scheme is None or scheme.color_by != "value" or list(scheme.fields or []) != fields:
            ds.app_config.color_scheme = fo.ColorScheme(color_by="value", fields=fields)
            ds.info["labelfix_color_scheme"] = True
            changed = True
    if changed:
        ds.save()


def start_database():
    """Import FiftyOne and start its database in a background thread; returns the
    (started) thread. A caller that builds a review dataset later (``labelfix demo``,
    while its last round trains) then does not wait for the import and the database
    start (about 8 s on 2 cores) at that point. A failure is left to the later
    :func:`build_review_dataset`, which meets it again and reports it in one line."""
    import threading

    def warm():
        from labelfix.review import enable_plugin

        enable_plugin()
        try:
            import fiftyone as fo

            fo.list_datasets()
        except Exception:   # noqa: BLE001 - reported by the build that needs the database
            pass

    thread = threading.Thread(target=warm, name="labelfix-fiftyone-start", daemon=True)
    thread.start()
    return thread


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
        ``(dataset, ReviewSummary)``. Also writes RUN/review.json (the dataset name),
        RUN/decisions.csv (:func:`labelfix.review.decisions.sync_decisions`) and, when
        decided suggestions are no longer made, RUN/decisions_archive.csv.

    Everything in corrections.csv is checked (ids, file names, classes, ``accept``
    values) before the dataset is touched: on an error nothing is applied.
    """
    from labelfix.review import enable_plugin
    from labelfix.review.decisions import read_archive

    run = run if isinstance(run, Run) else load_run(run)
    enable_plugin()
    import fiftyone as fo

    recorded = recorded_dataset_name(run)
    explicit = name is not None
    name, found = run_dataset_name(run, name)
    notes: list[str] = [f"using {found}"] if found else []
    switched = explicit and recorded is not None and recorded != name

    ls = run.labelset
    sugg = suggestion_rows(run)
    from labelfix.cleaning.clean_run import held_out_logits

    logits = held_out_logits(run)
    class_names = ls.class_names
    archive = read_archive(run)

    ds = fo.load_dataset(name) if fo.dataset_exists(name) else None
    if ds is not None:
        _check_owner(ds, name, run, "pass --name to choose another name")
    boxes = _source_boxes(ls, notes)

    previous = fo.load_dataset(recorded) if switched and fo.dataset_exists(recorded) else None
    plan, counts, gone = _decision_plan(run, ds, previous, sugg, class_names, archive, notes,
                                        switch=(recorded, name) if switched else None)
    ds = _claim_dataset(ds, name, run, class_names, max_predictions)
    image_ids = ls.images["image_id"].to_numpy(np.int64)
    _sync_samples(ds, ls, image_ids)
    explicit_negatives = bool(_any_unknown(ls.labels, chunk_rows))
    _write_fields(ds, _field_values(ls, image_ids, logits, sugg, plan, boxes, explicit_negatives, max_predictions,
                                    chunk_rows))
    views = _show_in_app(ds, sugg, class_names, boxes is not None, explicit_negatives, notes)

    atomic.write_json(run.path / REVIEW_FILE, {"dataset": name})
    if previous is not None and run_tag(run) in previous.tags:   # one dataset is the run's
        previous.tags = [t for t in previous.tags if t != run_tag(run)]
    _archive_gone(run, gone, notes)
    decided = _final_decisions(ds, run, notes)
    return ds, ReviewSummary(
        name=name,
        samples=len(ds),
        suggestions=int(len(sugg)),
        additions=int((sugg["action"] == "add").sum()),
        removals=int((sugg["action"] == "remove").sum()),
        accepted=decided[ACCEPTED],
        rejected=decided[REJECTED],
        to_review=int(len(sugg)) - decided[ACCEPTED] - decided[REJECTED],
        restored_decisions=counts["restored"],
        imported_decisions=counts["imported"],
        archived_decisions=len(gone),
        boxes=sum(len(v) for v in boxes.values()) if boxes else 0,
        views=views,
        notes=notes,
    )


def _check_owner(ds, name: str, run: Run, hint: str) -> None:
    """Refuse dataset ``ds`` (named ``name``) when its ``info["labelfix_run"]`` records
    another run than ``run``: a LabelfixError whose one line ends with ``hint``."""
    other = ds.info.get("labelfix_run")
    if other and other != str(run.path.resolve()):
        raise LabelfixError(f"{run.path}: dataset {name!r} belongs to another run ({other}); {hint}")


def _decision_plan(run: Run, ds, previous, sugg: pd.DataFrame, class_names: list[str], archive: dict,
                   notes: list[str], switch: tuple[str, str] | None):
    """The decisions of this build, from the dataset ``ds`` (None: none yet),
    RUN/decisions.csv and the ``archive`` (:func:`_merge_known`, :func:`_plan_decisions`).

    ``switch``: ``(recorded, name)`` when the dataset name was switched from the one
    review.json records (else None); ``previous``: the recorded dataset then (or None),
    whose decisions are first synced to RUN/decisions.csv when it belongs to ``run``.
    Appends the notes on a switch and on overridden decisions to ``notes``; returns
    :func:`_plan_decisions`' ``(plan, counts, gone)``.
    """
    switched = switch is not None
    if previous is not None and previous.info.get("labelfix_run") == str(run.path.resolve()):
        from labelfix.review.decisions import sync_decisions

        sync_decisions(previous, run)   # its tag-button decisions too, before they are brought over
    keep, restores, differ = _merge_known(_existing_decisions(ds) if ds is not None else {}, _csv_decisions(run),
                                          switched)
    if switched:
        recorded, name = switch
        notes.append(f"the run's review dataset is now {name!r} (was {recorded!r}); the decisions of "
                     f"{run.path / 'decisions.csv'} were brought into it"
                     + (f"; {differ} suggestions decided differently there keep this dataset's decision"
                        if differ else ""))
    plan, counts, gone = _plan_decisions(sugg, class_names, keep, archive, restores)
    if counts["overridden"]:
        o = counts["overridden"]
        notes.append(f"{len(o)} earlier decisions were changed by edited accept cells of corrections.csv "
                     f"(an edited cell wins): {'; '.join(o[:5])}" + (f"; and {len(o) - 5} more" if len(o) > 5 else ""))
    return plan, counts, gone


def _claim_dataset(ds, name: str, run: Run, class_names: list[str], max_predictions: int | None):
    """``ds`` (None: a new persistent dataset ``name``) recorded as ``run``'s review
    dataset: ``info`` labelfix_run, labelfix_classes and labelfix_max_predictions, the
    run's tag (:func:`run_tag`) and the default classes, saved. Returns the dataset."""
    import fiftyone as fo

    if ds is None:
        ds = fo.Dataset(name, persistent=True)
    ds.info["labelfix_run"] = str(run.path.resolve())
    if run_tag(run) not in ds.tags:   # survives a rename, unlike the name review.json records
        ds.tags = [*ds.tags, run_tag(run)]
    ds.info["labelfix_classes"] = class_names
    ds.info["labelfix_max_predictions"] = max_predictions   # the plugin's re-rank keeps it
    ds.default_classes = class_names
    ds.save()
    return ds


def _sync_samples(ds, ls, image_ids: np.ndarray) -> None:
    """One sample per image of the label set ``ls``, matched by ``image_id``
    (``image_ids``: the (N,) int64 ids in row order): the samples of images no longer in
    the run are deleted and a sample (file path, image_id, file_name, size) is added for
    every image without one."""
    import fiftyone as fo

    have = set(int(i) for i in ds.values("image_id")) if len(ds) and ds.has_field("image_id") else set()
    wanted = set(int(i) for i in image_ids)
    stale = have - wanted
    if stale:
        from fiftyone import ViewField as F

        ds.delete_samples(ds.match(F("image_id").is_in(sorted(stale))))
    new_rows = [r for r in range(ls.num_images) if int(image_ids[r]) not in have]
    if new_rows:
        samples = []
        for r in new_rows:
            w, h = int(ls.images.at[r, "width"]), int(ls.images.at[r, "height"])
            samples.append(
                fo.Sample(
                    filepath=str(Path(on_disk_name(ls.image_path(r), ls.image_root)).resolve()),
                    image_id=int(image_ids[r]),
                    file_name=str(ls.images.at[r, "file_name"]),
                    metadata=fo.ImageMetadata(width=w, height=h) if w and h else None,
                )
            )
        ds.add_samples(samples, progress=False)
        # FiftyOne reloads every in-memory Sample after each set_values (_write_fields): with
        # the 1,200 demo samples still referenced here that took 4 of the review's 5 seconds
        # per field (profiled on the demo), so drop them before writing the fields
        del samples


def _field_values(ls, image_ids: np.ndarray, logits, sugg: pd.DataFrame, plan: list, boxes: dict[int, list] | None,
                  explicit_negatives: bool, max_predictions: int | None, chunk_rows: int) -> dict[str, dict]:
    """The label fields of every image, ``{field: {image_id: value}}``, in ``chunk_rows``
    batches of the (N, K) ``ls.labels`` and ``logits``.

    Fields ``ground_truth``, ``detections`` (when ``boxes``, :func:`_source_boxes`, is
    not None), ``negatives`` (when ``explicit_negatives``), ``predictions``
    (:func:`_predictions`), ``suggestions`` (the rows of ``sugg`` with their ``plan``
    item, :func:`_plan_decisions`) and ``issue_score`` (float).
    """
    import fiftyone as fo

    class_names = ls.class_names
    sugg = sugg.assign(review_plan=pd.Series(plan, index=sugg.index, dtype=object))
    by_row = {r: g for r, g in sugg.groupby("row", sort=False)}
    fields = ["ground_truth"] + ([DETECTIONS] if boxes is not None else []) + (
        ["negatives"] if explicit_negatives else []) + ["predictions", SUGGESTIONS, "issue_score"]
    out: dict[str, dict] = {f: {} for f in fields}

    def classes_where(row, value):
        return fo.Classifications(
            classifications=[fo.Classification(label=class_names[c]) for c in np.flatnonzero(row == value)]
        )

    for s in range(0, ls.num_images, chunk_rows):
        lab = np.asarray(ls.labels[s : s + chunk_rows])
        lg = np.asarray(logits[s : s + chunk_rows], np.float32)
        prob = sigmoid(lg.astype(np.float64))
        for j in range(lab.shape[0]):
            r, iid = s + j, int(image_ids[s + j])
            out["ground_truth"][iid] = classes_where(lab[j], POS)
            if explicit_negatives:
                out["negatives"][iid] = classes_where(lab[j], NEG)
            if boxes is not None:
                out[DETECTIONS][iid] = fo.Detections(detections=boxes.get(iid, []))
            out["predictions"][iid] = _predictions(prob[j], lg[j], class_names, max_predictions)
            out[SUGGESTIONS][iid], out["issue_score"][iid] = _sample_suggestions(by_row.get(r), class_names)
    return out


def _predictions(prob: np.ndarray, lg: np.ndarray, class_names: list[str], max_predictions: int | None):
    """One sample's ``predictions`` from its (K,) probabilities and float32 logits: a
    Classification (confidence, ``logit``) per class, most probable first, at most
    ``max_predictions`` (None: all K), and the full logit vector as ``logits``."""
    import fiftyone as fo

    order = np.argsort(-prob, kind="stable")
    if max_predictions is not None:
        order = order[:max_predictions]
    return fo.Classifications(
        classifications=[
            fo.Classification(label=class_names[c], confidence=float(prob[c]), logit=float(lg[c])) for c in order
        ],
        logits=lg.astype(np.float64),
    )


def _sample_suggestions(g: pd.DataFrame | None, class_names: list[str]) -> tuple[object, float]:
    """One sample's rows of the suggestions (with their ``review_plan``; None: none) ->
    ``(suggestions, issue_score)``: the Classifications, highest score first (then
    class index), and the highest score (0.0 without suggestions)."""
    import fiftyone as fo

    if g is None:
        return fo.Classifications(classifications=[]), 0.0
    g = g.sort_values(["score", "col"], ascending=[False, True], kind="stable")
    return fo.Classifications(
        classifications=[_suggestion(rec, class_names[int(rec.col)], rec.review_plan) for rec in g.itertuples()]
    ), float(g["score"].max())


def _write_fields(ds, values: dict[str, dict]) -> None:
    """Write :func:`_field_values`' ``{field: {image_id: value}}`` to ``ds``; the optional
    fields (``detections``, ``negatives``) missing from ``values`` are deleted."""
    # validate=False: the values are built with the fields' own label types, and
    # FiftyOne's per-value validation was a sixth of the build (profiled on the demo)
    for f in ("ground_truth", DETECTIONS, "negatives", "predictions", SUGGESTIONS, "issue_score"):
        if f in values:
            ds.set_values(f, values[f], key_field="image_id", validate=False)
        elif ds.has_sample_field(f):
            ds.delete_sample_field(f)


def _show_in_app(ds, sugg: pd.DataFrame, class_names: list[str], boxes: bool, explicit_negatives: bool,
                 notes: list[str]) -> list[str]:
    """What the App shows of ``ds``: the label attributes declared, the saved views
    (:func:`_saved_views`) and the sidebar and colours (:func:`_app_config`). Returns the
    saved views' names."""
    # declare the label attributes (action, given, probability, ...) so that the App's
    # sidebar lists them, filters on them and shows them in the sample modal
    ds.add_dynamic_sample_fields(fields=[f for f in (SUGGESTIONS, "predictions", DETECTIONS) if ds.has_sample_field(f)])
    views = _saved_views(ds, class_view_names(sugg, class_names), class_names, notes)
    active = ["ground_truth"] + ([DETECTIONS] if boxes else []) + (
        ["negatives"] if explicit_negatives else []) + [SUGGESTIONS]
    suggested_classes = [class_names[k] for k in sorted(set(sugg["col"].astype(int)))]
    _app_config(ds, active, color_fields(class_names, suggested_classes, explicit_negatives, boxes))
    return views


def _archive_gone(run: Run, gone: list, notes: list[str]) -> None:
    """Keep the decisions of the suggestions no longer made (``gone``,
    ``[(image_id, class, _Prev)]`` from :func:`_plan_decisions`) in
    RUN/decisions_archive.csv, with a note; nothing when ``gone`` is empty."""
    if not gone:
        return
    from labelfix.review.decisions import archive_decisions

    archive_decisions(run, pd.DataFrame([
        {"image_id": iid, "file_name": p.file_name, "class": cls, "category_id": p.category_id,
         "suggested": p.suggested, "action": p.action, "score": p.score, "decision": _decision_of(p.tags),
         "source": "fiftyone"}
        for iid, cls, p in gone
    ]))
    notes.append(f"{len(gone)} decisions of suggestions that clean no longer makes were kept in "
                 f"{run.path / 'decisions_archive.csv'}")


def _final_decisions(ds, run: Run, notes: list[str]) -> dict[str, int]:
    """Write RUN/decisions.csv from ``ds`` and return its ``{"accepted": a, "rejected": r}``
    counts, from one read of the dataset (:func:`labelfix.review.decisions.sync_counts`);
    notes the suggestions tagged both ways."""
    from labelfix.review.decisions import sync_counts

    counts, both = sync_counts(ds, run)
    if both:
        notes.append(f"{both} suggestions are tagged both '{ACCEPTED}' and '{REJECTED}': undecided, like untagged "
                     f"ones (the to_review view keeps them), until one of the tags is removed")
    return counts


def _any_unknown(labels, chunk_rows: int) -> bool:
    for s in range(0, labels.shape[0], chunk_rows):
        if (np.asarray(labels[s : s + chunk_rows]) == UNK).any():
            return True
    return False


def load_review_dataset(run: Run | str | Path, name: str | None = None):
    """The review dataset of ``run`` (``name``, else :func:`run_dataset_name`'s)."""
    run = run if isinstance(run, Run) else load_run(run)
    from labelfix.review import enable_plugin

    enable_plugin()
    import fiftyone as fo

    name, _ = run_dataset_name(run, name)

    if not fo.dataset_exists(name):
        raise LabelfixError(f"{run.path}: FiftyOne dataset {name!r} not found; run `labelfix review {run.path}` first")
    ds = fo.load_dataset(name)
    _check_owner(ds, name, run, "its decisions are not this run's")   # as the review build refuses it
    return ds
