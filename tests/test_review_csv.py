"""Review without the App: the ``accept`` column of corrections.csv goes into the review
dataset, ``labelfix clean`` keeps it across re-runs (decisions of suggestions that
disappear are archived, not lost), re-running review changes nothing, and a
corrections.csv that does not belong to the run is refused before anything is applied."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from test_export_coco import make_run, set_accept
from test_review import fo, unique  # noqa: F401  (session fixture: isolated database)

from labelfix.cli import main

pytestmark = pytest.mark.fiftyone


def _key(frame: pd.DataFrame) -> dict:
    return dict(zip(zip(frame["image_id"].astype(int), frame["class"]), frame["decision"]))


def _snapshot(ds) -> dict:
    """Everything a user sees in the dataset: sample fields and labels (without the
    timestamps and the ids of rewritten given/prediction labels), suggestion ids and
    tags, saved views with their stages, the App config."""
    skip = {"_id", "created_at", "last_modified_at"}

    def clean(value, keep_id):
        if isinstance(value, dict):
            return {k: clean(v, keep_id) for k, v in value.items() if k not in skip or (keep_id and k == "_id")}
        if isinstance(value, list):
            return [clean(v, keep_id) for v in value]
        return value

    samples = sorted(
        ({k: clean(v, k == "suggestions") for k, v in smp.to_mongo_dict().items() if k not in skip}
         for smp in ds.iter_samples()),
        key=lambda d: d["image_id"],
    )
    views = {}
    for name in sorted(ds.list_saved_views()):
        info = {k: v for k, v in ds.get_saved_view_info(name).items() if k != "last_loaded_at"}
        stages = [{k: v for k, v in st.items() if k != "_uuid"} for st in ds.load_saved_view(name)._serialize()]
        views[name] = (info, stages)  # last_modified_at included: the view was not rewritten
    return {"samples": samples, "views": views, "app_config": ds.app_config.to_dict(),
            "schema": sorted(ds.get_field_schema(flat=True)), "info": dict(ds.info)}


@pytest.fixture
def run_dir(demo_data, tmp_path):
    return make_run(demo_data, tmp_path / "run")


def _review(run_dir, name, *extra):
    return CliRunner().invoke(main, ["review", str(run_dir), "--name", name, *extra])


def test_accept_column_is_imported_and_rerun_changes_nothing(fo, run_dir):  # noqa: F811
    from labelfix.review.decisions import decisions_frame, read_decisions_csv

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    picks = {(int(r.image_id), r["class"]): v for (_, r), v in zip(corr.iterrows(), ["1", "No", "yes", "", "TRUE", "0"])}
    set_accept(run_dir, picks)
    name = unique()
    r = _review(run_dir, name)
    try:
        assert r.exit_code == 0, r.output
        assert "decisions: 3 accepted, 2 rejected, 7 to review (5 imported from the accept column" in r.output
        ds = fo.load_dataset(name)
        got = _key(decisions_frame(ds))
        expect = {"1": "accepted", "yes": "accepted", "true": "accepted", "no": "rejected", "0": "rejected", "": ""}
        for k, v in picks.items():
            assert got[k] == expect[v.lower()]
        assert sum(d != "" for d in got.values()) == 5
        # the decisions are label tags on the matching suggestion labels
        for smp in ds.iter_samples():
            for c in smp.suggestions.classifications:
                want = got[(smp.image_id, c.class_name)]
                assert set(c.tags) == ({want} if want else set())
        assert _key(read_decisions_csv(run_dir)) == got

        # a second run changes nothing: same content, same views, decisions kept
        before = _snapshot(ds)
        csv_before = (run_dir / "decisions.csv").read_bytes()
        r2 = _review(run_dir, name)
        assert r2.exit_code == 0, r2.output
        assert "imported from the accept column" not in r2.output  # nothing new in the accept column
        assert _snapshot(fo.load_dataset(name)) == before
        assert (run_dir / "decisions.csv").read_bytes() == csv_before
    finally:
        if fo.dataset_exists(name):
            fo.load_dataset(name).delete()


def test_app_decision_wins_until_the_csv_cell_changes(fo, run_dir):  # noqa: F811
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame, reject

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    k = (int(corr.iloc[0].image_id), corr.iloc[0]["class"])
    set_accept(run_dir, {k: "1"})
    name = unique()
    ds, s = build_review_dataset(run_dir, name)
    try:
        assert s.imported_decisions == 1 and _key(decisions_frame(ds))[k] == "accepted"
        frame = decisions_frame(ds)
        reject(ds, label_ids=frame.loc[(frame.image_id == k[0]) & (frame["class"] == k[1]), "label_id"])
        # the CSV still says 1, but that value was imported already: the App's decision stays
        ds, s = build_review_dataset(run_dir, name)
        assert s.imported_decisions == 0 and _key(decisions_frame(ds))[k] == "rejected"
        # "yes" means the same as "1": still nothing new
        set_accept(run_dir, {k: "yes"})
        ds, s = build_review_dataset(run_dir, name)
        assert s.imported_decisions == 0 and _key(decisions_frame(ds))[k] == "rejected"
        # the reviewer edits the cell: the new value wins; emptying it clears the decision
        set_accept(run_dir, {k: "0"})
        ds, s = build_review_dataset(run_dir, name)
        assert s.imported_decisions == 1 and _key(decisions_frame(ds))[k] == "rejected"
        assert not any("changed by edited accept cells" in n for n in s.notes)   # the same decision
        # an edit that changes the dataset's decision wins, and the note names it
        set_accept(run_dir, {k: "1"})
        ds, s = build_review_dataset(run_dir, name)
        assert _key(decisions_frame(ds))[k] == "accepted"
        assert any(f"1 earlier decisions were changed by edited accept cells of corrections.csv "
                   f"(an edited cell wins): image {k[0]} {k[1]!r}: rejected -> accepted" in n for n in s.notes)
        set_accept(run_dir, {})
        ds, s = build_review_dataset(run_dir, name)
        assert _key(decisions_frame(ds))[k] == ""
        assert any(f"image {k[0]} {k[1]!r}: accepted -> undecided" in n for n in s.notes)
    finally:
        ds.delete()


def _other_run(demo_data, tmp_path) -> Path:
    """A run on other images (the demo's test split) whose image ids overlap the run's."""
    folder = tmp_path / "other_data"
    folder.mkdir()
    (folder / "images").symlink_to(Path(demo_data["images"]).resolve())
    (folder / "train.json").write_text(Path(demo_data["test"]).read_text())
    return make_run({"train": folder / "train.json"}, tmp_path / "other_run", seed=5)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("case", ["unknown_image", "other_run", "bad_accept"])
def test_foreign_corrections_are_refused_and_nothing_is_applied(fo, run_dir, demo_data, tmp_path, case):  # noqa: F811
    from labelfix.review.decisions import decisions_frame

    name = unique()
    set_accept(run_dir, {})
    r = _review(run_dir, name)
    assert r.exit_code == 0, r.output
    ds = fo.load_dataset(name)
    try:
        before = _snapshot(ds)
        decisions_before = (run_dir / "decisions.csv").read_bytes()
        good = (run_dir / "corrections.csv").read_text()
        corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
        corr["accept"] = "1"  # would accept everything if applied
        if case == "unknown_image":
            corr.loc[3, "image_id"] = "999999"
            expect = "corrections.csv: row 5: image_id 999999"
        elif case == "other_run":
            other = pd.read_csv(_other_run(demo_data, tmp_path) / "corrections.csv", dtype=str, keep_default_na=False)
            corr = other.assign(accept="1")
            expect = "corrections.csv: row 2: file_name 'images/test_"
        else:
            corr.loc[2, "accept"] = "maybe"
            expect = "corrections.csv: row 4: accept must be 1/0/true/false/yes/no/y/n or empty, got 'maybe'"
        corr.to_csv(run_dir / "corrections.csv", index=False)

        line = _one_error_line(_review(run_dir, name))
        assert expect in line
        assert _snapshot(fo.load_dataset(name)) == before  # nothing applied
        assert (decisions_frame(ds)["decision"] == "").all()
        assert (run_dir / "decisions.csv").read_bytes() == decisions_before

        # export coco (decisions from the CSV) refuses too, and writes nothing
        out = tmp_path / "cleaned.json"
        r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(out), "--from", "csv"])
        assert expect in _one_error_line(r)
        assert not out.exists() and not (tmp_path / "cleaned.changes.csv").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cleaned")]  # no temporary files left
        (run_dir / "corrections.csv").write_text(good)
    finally:
        ds.delete()


def test_export_coco_unknown_image_ids_default_source(run_dir, tmp_path):
    """Without a review dataset, `labelfix export coco` reads the CSV: one line, no output."""
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    corr.loc[0, "image_id"] = "424242"
    corr.to_csv(run_dir / "corrections.csv", index=False)
    out = tmp_path / "cleaned.json"
    r = CliRunner().invoke(main, ["export", "coco", str(run_dir), "--out", str(out)])
    assert "corrections.csv: row 2: image_id 424242" in _one_error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- labelfix clean keeps the accept column ----------------------------------------------


def _clean(run, *extra):
    r = CliRunner().invoke(main, ["clean", str(run), "--no-report", "--neighbours", "0", *extra])
    assert r.exit_code == 0, r.output
    return r


def test_clean_keeps_decisions_and_archives_the_ones_it_drops(tmp_path):
    from test_clean_run import make_run as make_clean_run
    from test_clean_run import noisy_problem

    from labelfix.export.coco import export_cleaned_coco

    _, given, logits, _ = noisy_problem(seed=4, n=200)
    run = make_clean_run(tmp_path / "run", given, logits)
    _clean(run)
    first = pd.read_csv(run / "corrections.csv", dtype=str, keep_default_na=False)
    assert "accept" not in first.columns and len(first) >= 14
    # the reviewer fills in the accept column in a spreadsheet
    values = {0: "1", 1: "no", 2: "Yes", 12: "1", 13: "0"}
    first["accept"] = [values.get(i, "") for i in range(len(first))]
    # saved as a spreadsheet does: byte-order mark, CRLF line ends
    (run / "corrections.csv").write_bytes(b"\xef\xbb\xbf" + first.to_csv(index=False, lineterminator="\r\n").encode())
    key = ["image_id", "category_id", "suggested"]

    # a re-run that keeps only the top 10: rows 0-2 keep their values as written, rows 12
    # and 13 are no longer suggested and go to the archive (the ranking as before: learning
    # from the decisions, which reorders it, is tested in test_clean_run.py)
    r = _clean(run, "--max-suggestions", "10", "--no-learn-from-decisions")
    assert "kept 3 decisions of the previous corrections.csv" in r.output
    assert "2 decisions of suggestions no longer made were kept in" in r.output
    second = pd.read_csv(run / "corrections.csv", dtype=str, keep_default_na=False)
    assert list(second.columns[-1:]) == ["accept"] and len(second) == 10
    merged = second.merge(first[key + ["accept"]], on=key, suffixes=("", "_before"))
    assert len(merged) == 10 and (merged["accept"] == merged["accept_before"]).all()
    assert list(second["accept"][:3]) == ["1", "no", "Yes"]
    archive = pd.read_csv(run / "decisions_archive.csv", dtype=str, keep_default_na=False)
    assert set(zip(archive.image_id, archive.category_id, archive.decision, archive.source)) == {
        (first.at[12, "image_id"], first.at[12, "category_id"], "accepted", "corrections.csv"),
        (first.at[13, "image_id"], first.at[13, "category_id"], "rejected", "corrections.csv"),
    }
    # export now: the archived decisions are applied and verified as well (before, they
    # were dropped, and the next round could suggest those cells again)
    res = export_cleaned_coco(run, tmp_path / "before_restore.json", source="csv")
    assert res.archived == 2 and res.changes == 3   # rows 0 and 2, and the archived row 12
    log = pd.read_csv(tmp_path / "before_restore.changes.csv", dtype=str)
    assert (first.at[12, "image_id"], first.at[12, "category_id"]) in set(zip(log.image_id, log.category_id))
    verified = json.loads((tmp_path / "before_restore.json").read_text())["labelfix"]["verified"]
    for i in (0, 1, 2, 12, 13):
        assert [int(first.at[i, "image_id"]), int(first.at[i, "category_id"])] in verified

    # the same changes suggested again: their decisions come back from the archive
    r = _clean(run, "--no-learn-from-decisions")
    assert "restored 2 decisions from" in r.output
    third = pd.read_csv(run / "corrections.csv", dtype=str, keep_default_na=False)
    now = dict(zip(zip(third.image_id, third.category_id, third.suggested), third.accept))
    was = list(zip(first.image_id, first.category_id, first.suggested))
    assert [now[k] for k in was[:3]] == ["1", "no", "Yes"]  # carried as written
    assert [now[k] for k in was[12:14]] == ["yes", "no"]  # restored from the archive
    assert sum(v != "" for v in now.values()) == 5
    # and export reads them: 2 + 1 accepted changes
    res = export_cleaned_coco(run, tmp_path / "cleaned.json", source="csv")
    assert res.changes == 3
    # the reviewer clears the restored 'yes': it stays cleared (before: every clean
    # restored it from the archive) and neither learning nor export counts it
    third.loc[[k == was[12] for k in zip(third.image_id, third.category_id, third.suggested)], "accept"] = ""
    third.to_csv(run / "corrections.csv", index=False)
    r = _clean(run, "--no-learn-from-decisions")
    assert "restored" not in r.output
    fourth = pd.read_csv(run / "corrections.csv", dtype=str, keep_default_na=False)
    now = dict(zip(zip(fourth.image_id, fourth.category_id, fourth.suggested), fourth.accept))
    assert now[was[12]] == "" and now[was[13]] == "no"
    from labelfix.review.decisions import known_decisions

    known = known_decisions(run)
    assert tuple(map(int, was[12])) not in known and known[tuple(map(int, was[13]))] is False
    res = export_cleaned_coco(run, tmp_path / "cleared.json", source="csv")
    assert res.changes == 2


def test_review_archives_app_decisions_of_dropped_suggestions(fo, run_dir):  # noqa: F811
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import accept, decisions_frame

    name = unique()
    ds, _ = build_review_dataset(run_dir, name)
    try:
        frame = decisions_frame(ds)
        top = frame.iloc[0]
        accept(ds, label_ids=[top.label_id])
        full = (run_dir / "corrections.csv").read_text()
        corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
        corr = corr[~((corr.image_id.astype(int) == top.image_id) & (corr["class"] == top["class"]))]
        corr.to_csv(run_dir / "corrections.csv", index=False)
        ds, s = build_review_dataset(run_dir, name)
        assert s.archived_decisions == 1 and s.suggestions == 11
        archive = pd.read_csv(run_dir / "decisions_archive.csv", keep_default_na=False)
        assert archive[["image_id", "class", "decision", "source"]].values.tolist() == [
            [top.image_id, top["class"], "accepted", "fiftyone"]]
        # clean suggests it again: the decision comes back on the new label
        (run_dir / "corrections.csv").write_text(full)
        ds, s = build_review_dataset(run_dir, name)
        assert s.restored_decisions == 1
        assert _key(decisions_frame(ds))[(top.image_id, top["class"])] == "accepted"
    finally:
        ds.delete()


def test_review_json_and_decisions_csv_columns(fo, run_dir):  # noqa: F811
    """decisions.csv records the imported accept value, so a fresh dataset (new machine)
    gets the App decisions back without re-importing an old CSV value over them."""
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import DECISION_COLUMNS, decisions_frame, reject

    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    k = (int(corr.iloc[1].image_id), corr.iloc[1]["class"])
    set_accept(run_dir, {k: "yes"})
    name = unique()
    ds, _ = build_review_dataset(run_dir, name)
    frame = decisions_frame(ds)
    reject(ds, label_ids=frame.loc[(frame.image_id == k[0]) & (frame["class"] == k[1]), "label_id"])
    from labelfix.review.decisions import sync_decisions

    sync_decisions(ds, run_dir)
    csv = pd.read_csv(run_dir / "decisions.csv", keep_default_na=False)
    assert list(csv.columns) == DECISION_COLUMNS
    assert json.loads((run_dir / "review.json").read_text()) == {"dataset": name}
    ds.delete()
    ds, s = build_review_dataset(run_dir, name)
    try:
        assert _key(decisions_frame(ds))[k] == "rejected" and s.imported_decisions == 0
    finally:
        ds.delete()


def test_plugin_operators_still_tag_suggestions(fo, run_dir):  # noqa: F811
    """The accept / reject operators work on the "+ class" / "- class" labels."""
    import fiftyone.operators as foo

    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame

    ds, _ = build_review_dataset(run_dir, unique())
    try:
        view = ds.load_saved_view(sorted(n for n in ds.list_saved_views() if n.startswith("class-"))[0])
        res = foo.execute_operator("@labelfix/review/accept_suggestions",
                                   ctx=dict(dataset=ds, view=view, params={"target": "view"}))
        f = decisions_frame(ds)
        cls = set(view.values("suggestions.classifications.class_name", unwind=True))
        assert res.result["count"] == (f["class"].isin(cls)).sum() > 0
        assert set(f.loc[f.decision == "accepted", "class"]) == cls
        assert os.path.exists(Path(ds.info["labelfix_run"]) / "decisions.csv")
    finally:
        ds.delete()


def test_decision_keys_parse_spreadsheet_numbers_exactly():
    """The key of a decision reads ids as every CSV check does: ``526.0`` as 526, large
    ids without float rounding, and refuses what is not an integer."""
    from labelfix.review.decisions import cell_key

    big = 2**53 + 1   # a float would round it to 2**53
    assert cell_key("526.0", " 3 ", True) == (526, 3, 1)
    assert cell_key(str(big), 7, "0.0") == (big, 7, 0)
    for bad in ("1.5", "1e3", "nan", "", "abc"):
        with pytest.raises(ValueError):
            cell_key(bad, 1, 1)
