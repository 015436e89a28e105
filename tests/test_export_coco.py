"""``labelfix export coco``: cleaned COCO from reviewed corrections (CSV path, no FiftyOne).

``make_run`` builds a small run directory (the contract of docs/internals.md) from the
demo data; tests/test_review.py uses it too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from labelfix.cli import main
from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.io.coco import read_coco
from labelfix.labels import NEG, POS, UNK
from labelfix.run import CORRECTIONS_COLUMNS

N_IMAGES = 40


def small_coco(demo_data, n: int = N_IMAGES, lvis: bool = False) -> Path:
    """The first ``n`` demo train images as a COCO file next to the demo images; with
    ``lvis`` every image lists two verified negatives (other cells unknown)."""
    data = json.loads(Path(demo_data["train"]).read_text())
    images = data["images"][:n]
    keep = {im["id"] for im in images}
    anns = [a for a in data["annotations"] if a["image_id"] in keep]
    if lvis:
        pos = {}
        for a in anns:
            pos.setdefault(a["image_id"], set()).add(a["category_id"])
        images = [dict(im) for im in images]
        for im in images:
            free = [c for c in range(1, 11) if c not in pos.get(im["id"], set())]
            im["neg_category_ids"] = free[:2]
    data = {**data, "images": images, "annotations": anns}
    # next to the demo json, so that the relative image names resolve
    path = Path(demo_data["train"]).parent / ("small_lvis.json" if lvis else "small.json")
    if not path.exists():
        atomic.write_json(path, data, indent=None)
    return path


def make_run(demo_data, run_dir: Path, *, lvis: bool = False, seed: int = 0, n_add: int = 6, n_remove: int = 6) -> Path:
    """A run directory with labels, stats/logits.npy, cells/*.npy and corrections.csv."""
    ls = read_coco(small_coco(demo_data, lvis=lvis))
    ls.save(run_dir)
    rng = np.random.default_rng(seed)
    lab = np.asarray(ls.labels)
    n, k = lab.shape
    logits = np.where(lab == POS, 2.0, -2.0) + rng.normal(0, 1, size=(n, k))
    atomic.write_npy(run_dir / "stats" / "logits.npy", logits.astype(np.float16))
    score = np.zeros((n, k), np.float32)
    suggested = lab.copy()
    rows_pos, cols_pos = np.nonzero(lab == POS)
    rows_neg, cols_neg = np.nonzero(lab != POS)
    pick_r = rng.choice(len(rows_pos), n_remove, replace=False)
    pick_a = rng.choice(len(rows_neg), n_add, replace=False)
    recs = []
    for idx, action, rows, cols in ((pick_r, "remove", rows_pos, cols_pos), (pick_a, "add", rows_neg, cols_neg)):
        for j in idx:
            r, c = int(rows[j]), int(cols[j])
            s = float(np.round(rng.uniform(0.3, 0.99), 4))
            score[r, c] = s
            suggested[r, c] = 1 if action == "add" else 0
            given = {POS: "1", NEG: "0", UNK: "unknown"}[int(lab[r, c])]
            recs.append({
                "image_id": int(ls.images.at[r, "image_id"]), "file_name": ls.images.at[r, "file_name"],
                "class": ls.class_names[c], "category_id": int(ls.classes.at[c, "category_id"]),
                "given": given, "suggested": int(suggested[r, c]), "action": action,
                "state": "estimated" if given == "unknown" else "re-labeled", "score": s,
                "p_clean": "" if given == "unknown" else 0.1, "probability": float(1 / (1 + np.exp(-logits[r, c]))),
            })
    corr = pd.DataFrame(recs, columns=CORRECTIONS_COLUMNS).sort_values("score", ascending=False, kind="stable")
    atomic.write_csv(run_dir / "corrections.csv", corr)
    atomic.write_npy(run_dir / "cells" / "score.npy", score)
    atomic.write_npy(run_dir / "cells" / "p_clean.npy", np.where(score > 0, 0.1, 0.9).astype(np.float32))
    atomic.write_npy(run_dir / "cells" / "state.npy", np.where(score > 0, 1, 0).astype(np.int8))
    atomic.write_npy(run_dir / "cells" / "suggested.npy", suggested.astype(np.int8))
    return run_dir


def set_accept(run_dir: Path, values: dict[tuple[int, str], str]) -> pd.DataFrame:
    """Add an ``accept`` column to corrections.csv as a user would (by (image_id, class))."""
    p = run_dir / "corrections.csv"
    corr = pd.read_csv(p, dtype=str, keep_default_na=False)
    corr["accept"] = [values.get((int(i), c), "") for i, c in zip(corr["image_id"], corr["class"])]
    corr.to_csv(p, index=False)
    return corr


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def run_dir(demo_data, tmp_path):
    return make_run(demo_data, tmp_path / "run")


def _expected(run_dir: Path, chosen: pd.DataFrame) -> np.ndarray:
    from labelfix.labels import LabelSet

    ls = LabelSet.load(run_dir)
    new = np.array(ls.labels)
    row = {int(i): r for r, i in enumerate(ls.images["image_id"])}
    col = {int(c): k for k, c in enumerate(ls.classes["category_id"])}
    for rec in chosen.itertuples():
        new[row[int(rec.image_id)], col[int(rec.category_id)]] = 1 if rec.action == "add" else 0
    return new


def test_export_from_csv_accept_column(run_dir, tmp_path):
    from pycocotools.coco import COCO

    from labelfix.export.coco import export_cleaned_coco

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    # accept 2 removals and 2 additions with different spellings, reject one, leave the rest
    rem = corr[corr["action"] == "remove"]
    add = corr[corr["action"] == "add"]
    values = {
        (int(rem.iloc[0].image_id), rem.iloc[0]["class"]): "1",
        (int(rem.iloc[1].image_id), rem.iloc[1]["class"]): "Yes",
        (int(add.iloc[0].image_id), add.iloc[0]["class"]): "true",
        (int(add.iloc[1].image_id), add.iloc[1]["class"]): "1",
        (int(add.iloc[2].image_id), add.iloc[2]["class"]): "no",
    }
    corr = set_accept(run_dir, values)
    src = Path(json.loads((run_dir / "source.json").read_text())["path"])
    src_hash = _sha(src)
    out = tmp_path / "cleaned.json"
    res = export_cleaned_coco(run_dir, out, decisions="accepted", source="csv")
    assert (res.changes, res.additions, res.removals, res.converted) == (4, 2, 2, False)
    assert _sha(src) == src_hash  # input untouched

    chosen = corr[corr["accept"].isin(["1", "Yes", "true"])]
    # labelfix reads back exactly the corrected labels
    back = read_coco(out)
    np.testing.assert_array_equal(np.asarray(back.labels), _expected(run_dir, chosen))

    # pycocotools loads it; untouched annotations are identical, removed ones are gone
    coco = COCO(str(out))
    orig = json.loads(src.read_text())
    removed = {(int(r.image_id), int(r.category_id)) for r in chosen.itertuples() if r.action == "remove"}
    kept = [a for a in orig["annotations"] if (a["image_id"], a["category_id"]) not in removed]
    cleaned = json.loads(out.read_text())
    assert [a for a in cleaned["annotations"] if "labelfix" not in a] == kept
    added = [a for a in cleaned["annotations"] if a.get("labelfix") == "added"]
    assert {(a["image_id"], a["category_id"]) for a in added} == {
        (int(r.image_id), int(r.category_id)) for r in chosen.itertuples() if r.action == "add"}
    assert all("bbox" not in a for a in added)
    assert len(coco.getAnnIds()) == len(kept) + 2
    for iid, cid in removed:
        im = next(i for i in cleaned["images"] if i["id"] == iid)
        assert cid in im["neg_category_ids"]
    assert cleaned["info"] == orig["info"] and cleaned["categories"] == orig["categories"]

    # change log lists every applied change
    log = pd.read_csv(res.change_log, dtype={"old": str, "new": str})
    assert list(log.columns) == ["image_id", "file_name", "class", "category_id", "old", "new", "action", "score"]
    assert set(zip(log["image_id"], log["category_id"], log["action"])) == {
        (int(r.image_id), int(r.category_id), r.action) for r in chosen.itertuples()}
    assert set(log.loc[log.action == "add", "new"]) == {"1"} and set(log.loc[log.action == "add", "old"]) == {"0"}
    assert set(log.loc[log.action == "remove", "old"]) == {"1"}

    # export twice: refused without overwrite (the files untouched), identical bytes with it
    first = (_sha(out), _sha(res.change_log))
    with pytest.raises(LabelfixError, match="already exists .*--overwrite"):
        export_cleaned_coco(run_dir, out, decisions="accepted", source="csv")
    export_cleaned_coco(run_dir, out, decisions="accepted", source="csv", overwrite=True)
    assert (_sha(out), _sha(res.change_log)) == first


def test_decision_modes(run_dir, tmp_path):
    from labelfix.export.coco import export_cleaned_coco

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    top = corr.iloc[0]  # highest score: reject it
    low = corr.iloc[-1]  # lowest score: accept it
    set_accept(run_dir, {(int(top.image_id), top["class"]): "0", (int(low.image_id), low["class"]): "1"})
    n = len(corr)
    res = export_cleaned_coco(run_dir, tmp_path / "all.json", decisions="all", source="csv")
    assert res.changes == n - 1  # everything but the rejected one
    thr = float(corr.iloc[3].score)
    res = export_cleaned_coco(run_dir, tmp_path / "ms.json", decisions=("min-score", thr), source="csv")
    scores = corr["score"].astype(float)
    expected = int(((scores >= thr).sum() - 1) + 1)  # minus the rejected top, plus the accepted low one
    assert res.changes == expected
    log = pd.read_csv(res.change_log)
    assert (int(top.image_id), int(top.category_id)) not in set(zip(log.image_id, log.category_id))
    assert (int(low.image_id), int(low.category_id)) in set(zip(log.image_id, log.category_id))


def test_no_accept_column_means_nothing_accepted(run_dir, tmp_path):
    from labelfix.export.coco import export_cleaned_coco

    out = tmp_path / "c.json"
    res = export_cleaned_coco(run_dir, out, source="csv")
    assert res.changes == 0
    src = json.loads(Path(json.loads((run_dir / "source.json").read_text())["path"]).read_text())
    cleaned = json.loads(out.read_text())
    assert cleaned["annotations"] == src["annotations"] and cleaned["images"] == src["images"]
    assert res.decided == 0
    # the command says that nothing is decided yet and how to decide (before: only "0 changes")
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(tmp_path / "d.json"), "--from", "csv"])
    assert r.exit_code == 0 and "0 cells recorded as verified" in r.output
    assert f"note: no suggestion of {run_dir} is decided yet" in r.output and "--decisions all" in r.output
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(tmp_path / "e.json"), "--from", "csv",
                                  "--decisions", "all"])
    assert r.exit_code == 0 and "is decided yet" not in r.output
    # a run without any suggestion has nothing to decide: no such note
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    corr.iloc[:0].to_csv(run_dir / "corrections.csv", index=False)
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(tmp_path / "f.json"), "--from", "csv"])
    assert r.exit_code == 0 and "0 changes applied" in r.output and "is decided yet" not in r.output


def test_lvis_source_unknown_cells(demo_data, tmp_path):
    """With unknown cells an addition of an unknown cell becomes positive, a removal a
    verified negative, and every other cell reads back unchanged (still unknown)."""
    from labelfix.export.coco import export_cleaned_coco

    run_dir = make_run(demo_data, tmp_path / "run", lvis=True, seed=1)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    assert "unknown" in set(corr["given"])
    set_accept(run_dir, {(int(i), c): "1" for i, c in zip(corr["image_id"], corr["class"])})
    out = tmp_path / "c.json"
    export_cleaned_coco(run_dir, out, source="csv")
    back = read_coco(out)
    assert (np.asarray(back.labels) == UNK).any()
    np.testing.assert_array_equal(np.asarray(back.labels), _expected(run_dir, corr))


def test_a_rejected_addition_of_an_unknown_cell_becomes_a_verified_negative(demo_data, tmp_path):
    """The reviewer who rejects "add class c" has looked and says c is absent: an unknown
    cell becomes a verified negative (in ``neg_category_ids``, logged as
    ``verify-negative``); a rejected addition of a given negative changes nothing; the
    rejected removals keep their positives. The next round reads the negatives as known
    and trusted."""
    from labelfix.cli import main
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.labels import LabelSet

    run_dir = make_run(demo_data, tmp_path / "run", lvis=True, seed=1, n_add=12)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    unknown_adds = corr[(corr["action"] == "add") & (corr["given"] == "unknown")]
    negative_adds = corr[(corr["action"] == "add") & (corr["given"] == "0")]
    assert len(unknown_adds) and len(negative_adds)
    set_accept(run_dir, {(int(i), c): "0" for i, c in zip(corr["image_id"], corr["class"])})   # reject all
    out = tmp_path / "c.json"
    res = export_cleaned_coco(run_dir, out, source="csv")
    assert (res.negatives, res.additions, res.removals, res.changes) == (len(unknown_adds), 0, 0, len(unknown_adds))

    given = LabelSet.load(run_dir)
    back = read_coco(out)
    expected = np.array(given.labels)
    row = {int(i): r for r, i in enumerate(given.images["image_id"])}
    col = {int(c): k for k, c in enumerate(given.classes["category_id"])}
    cells = [(row[int(i)], col[int(c)]) for i, c in zip(unknown_adds["image_id"], unknown_adds["category_id"])]
    for r, k in cells:
        expected[r, k] = NEG
    np.testing.assert_array_equal(np.asarray(back.labels), expected)
    assert all(bool(back.trusted()[r, k]) for r, k in cells)
    data = json.loads(out.read_text())
    negs = {im["id"]: set(im.get("neg_category_ids", [])) for im in data["images"]}
    assert all(int(c) in negs[int(i)] for i, c in zip(unknown_adds["image_id"], unknown_adds["category_id"]))
    log = pd.read_csv(tmp_path / "c.changes.csv", dtype=str, keep_default_na=False)
    assert set(log["action"]) == {"verify-negative"} and set(log["old"]) == {"unknown"} and set(log["new"]) == {"0"}
    assert len(log) == len(unknown_adds)

    result = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(tmp_path / "d.json"),
                                       "--from", "csv"])
    assert result.exit_code == 0, result.output
    assert f"{len(unknown_adds)} unknown cells verified negative (rejected additions)" in result.output


def test_cli_and_errors(run_dir, tmp_path):
    from labelfix.cli import main

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    set_accept(run_dir, {(int(corr.iloc[0].image_id), corr.iloc[0]["class"]): "1"})
    out = tmp_path / "cleaned.json"
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(out), "--from", "csv"])
    assert r.exit_code == 0, r.output
    assert "1 changes applied" in r.output and out.exists()
    # labelfix info on the cleaned file
    r = CliRunner().invoke(main, ["info", str(out), "--json", "--no-files"])
    assert r.exit_code == 0, r.output
    # refuses to overwrite the input
    src = json.loads((run_dir / "source.json").read_text())["path"]
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", src, "--from", "csv"])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(out), "--decisions", "min-score"])
    assert r.exit_code == 2 and "--min-score" in r.output
    # an existing file (another run's training labels, or a noise file's ground truth) is
    # replaced only with --overwrite; refused, neither it nor its change log changes
    other = tmp_path / "other.json"
    r = CliRunner().invoke(main, ["noise", src, "--kind", "flip", "--rate", "0.2", "--out", str(other)])
    assert r.exit_code == 0, r.output
    before = {p: _sha(p) for p in (other, tmp_path / "other.changes.csv")}
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(other), "--from", "csv"])
    assert r.exit_code == 2 and f"{other}: already exists (--out); pass --overwrite" in r.output
    assert len(r.output.strip().splitlines()) == 1 and {p: _sha(p) for p in before} == before
    r = CliRunner().invoke(main, ["noise", src, "--kind", "flip", "--rate", "0.3", "--out", str(other)])
    assert r.exit_code == 2 and "already exists" in r.output and {p: _sha(p) for p in before} == before
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(out), "--from", "csv", "--overwrite"])
    assert r.exit_code == 0 and "1 changes applied" in r.output
    # a bad accept value names the file and row
    c = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    c.loc[1, "accept"] = "maybe"
    c.to_csv(run_dir / "corrections.csv", index=False)
    with pytest.raises(LabelfixError, match=r"corrections.csv: row 3: accept must be"):
        from labelfix.export.coco import export_cleaned_coco

        export_cleaned_coco(run_dir, out, source="csv", overwrite=True)


def test_non_coco_source_is_converted(run_dir, tmp_path):
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.labels import LabelSet

    ls = LabelSet.load(run_dir)
    ls.source = {"format": "csv-wide", "path": str(tmp_path / "labels.csv")}
    ls.save(run_dir)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    set_accept(run_dir, {(int(i), c): "1" for i, c in zip(corr["image_id"], corr["class"])})
    out = tmp_path / "c.json"
    res = export_cleaned_coco(run_dir, out, source="csv")
    assert res.converted and res.changes == len(corr)
    np.testing.assert_array_equal(np.asarray(read_coco(out).labels), _expected(run_dir, corr))


def test_an_accepted_addition_leaves_the_negative_list(tmp_path):
    """A category in an image's ``neg_category_ids`` that the cleaned labels make positive
    is dropped from the list, so the cleaned file reads back without a conflict note."""
    import warnings

    from labelfix.io.coco_write import rewrite_coco

    data = {"images": [{"id": 1, "file_name": "a.png", "neg_category_ids": [2, 3]},
                       {"id": 2, "file_name": "b.png", "neg_category_ids": [1, 3]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1]}],
            "categories": [{"id": c, "name": n} for c, n in ((1, "a"), (2, "b"), (3, "c"))]}
    src = tmp_path / "src.json"
    src.write_text(json.dumps(data))
    ls = read_coco(src)
    new = np.asarray(ls.labels).copy()
    new[0, 1] = POS   # image 1: add "b", listed as a negative
    new[1, 1] = NEG   # image 2: remove "b"
    out = tmp_path / "cleaned.json"
    out.write_text(json.dumps(rewrite_coco(data, ls, new)))
    images = {im["id"]: im for im in json.loads(out.read_text())["images"]}
    assert images[1]["neg_category_ids"] == [3] and images[2]["neg_category_ids"] == [1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_coco(out)
    assert not (new == UNK).any()   # every cell known: the image's list is carried over, not rebuilt
    np.testing.assert_array_equal(np.asarray(back.labels), new)
