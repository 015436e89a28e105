"""``labelfix review``: the FiftyOne review dataset, decisions, the plugin's operators and
the FiftyOne label reader, on a real embedded MongoDB (one database per test session)."""

from __future__ import annotations

import os
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_export_coco import make_run

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS, LabelSet

pytestmark = pytest.mark.fiftyone


@pytest.fixture(scope="session")
def fo(tmp_path_factory):
    """fiftyone imported with its database in a fresh temporary folder."""
    if "fiftyone" not in sys.modules:
        os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp_path_factory.mktemp("fiftyone_db"))
        os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
        os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
        from labelfix.review import enable_plugin

        enable_plugin()
    import fiftyone

    return fiftyone


def unique(prefix: str = "lf-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def review(fo, demo_data, tmp_path):
    """(run_dir, dataset, summary) for a fresh run and dataset."""
    from labelfix.review.dataset import build_review_dataset

    run_dir = make_run(demo_data, tmp_path / "run")
    name = unique()
    ds, summary = build_review_dataset(run_dir, name)
    yield run_dir, ds, summary
    if fo.dataset_exists(name):
        fo.load_dataset(name).delete()


def _labels(sample_field) -> list[str]:
    return [c.label for c in (sample_field.classifications if sample_field else [])]


def test_fields_and_views(fo, review):
    run_dir, ds, s = review
    ls = LabelSet.load(run_dir)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype={"given": str})
    logits = np.load(run_dir / "stats" / "logits.npy").astype(np.float32)
    assert (s.samples, s.suggestions, s.additions, s.removals) == (40, 12, 6, 6)
    assert (s.accepted, s.rejected, s.to_review) == (0, 0, 12)
    assert len(ds) == 40 and ds.persistent
    assert ds.info["labelfix_run"] == str(run_dir.resolve())
    assert not ds.has_sample_field("negatives")  # plain COCO: negatives are implicit

    row_of = {int(i): r for r, i in enumerate(ls.images["image_id"])}
    names = ls.class_names
    for sample in ds:
        r = row_of[sample.image_id]
        assert sample.filepath == str(ls.image_path(r).resolve())
        assert sorted(_labels(sample.ground_truth)) == sorted(names[k] for k in np.flatnonzero(ls.labels[r] == POS))
        preds = {c.label: c for c in sample.predictions.classifications}
        assert len(preds) == 10
        for k, name in enumerate(names):
            assert preds[name].confidence == pytest.approx(1 / (1 + np.exp(-logits[r, k])), rel=1e-6)
            assert preds[name].logit == pytest.approx(logits[r, k])
        np.testing.assert_allclose(sample.predictions.logits, logits[r])
        mine = corr[corr["image_id"] == sample.image_id]
        sug = sample.suggestions.classifications
        assert sorted((c.class_name, c.action) for c in sug) == sorted(zip(mine["class"], mine["action"]))
        assert sample.issue_score == pytest.approx(mine["score"].max() if len(mine) else 0.0)
        for c in sug:
            rec = mine[mine["class"] == c.class_name].iloc[0]
            # read at a glance: "+ dog" adds the label, "- dog" removes it
            assert c.label == ("+ " if rec.action == "add" else "- ") + rec["class"]
            assert c.confidence == pytest.approx(rec.score) and c.score == pytest.approx(rec.score)
            assert (c.state, c.given, c.suggested, c.category_id) == (rec.state, rec.given, rec.suggested, rec.category_id)
            assert c.probability == pytest.approx(rec.probability)
            assert names[c.class_index] == c.class_name
            assert c.p_clean == pytest.approx(0.1)
    # the attributes are declared, so the App's sample modal lists them for each suggestion
    schema = ds.get_field_schema(flat=True)
    for attr in ("given", "suggested", "probability", "score", "state", "action", "class_name"):
        assert f"suggestions.classifications.{attr}" in schema

    assert set(ds.list_saved_views()) >= {"additions", "removals", "to_review"}
    for view_name, action in (("additions", "add"), ("removals", "remove")):
        view = ds.load_saved_view(view_name)
        assert sorted(view.values("suggestions.classifications.action", unwind=True)) == [action] * 6
        # sorted by the best score among the suggestions the view shows, highest first
        best = [max(c) for c in view.values("suggestions.classifications.confidence")]
        assert best == sorted(best, reverse=True) and len(best) == corr[corr.action == action].image_id.nunique()
        assert best[0] == pytest.approx(corr.loc[corr.action == action, "score"].max())
    assert ds.load_saved_view("to_review").count("suggestions.classifications") == 12

    # one view per class for the 5 classes with the most suggestions, named class-<name>
    counts = corr.groupby("class").size()
    top = sorted(counts.index, key=lambda c: (-counts[c], names.index(c)))[:5]
    assert s.views == ["additions", "removals", "to_review"] + [f"class-{c}" for c in top]
    assert set(ds.list_saved_views()) == set(s.views)
    for c in top:
        view = ds.load_saved_view(f"class-{c}")
        assert set(view.values("suggestions.classifications.class_name", unwind=True)) == {c}
        assert view.count("suggestions.classifications") == counts[c]
        best = [max(x) for x in view.values("suggestions.classifications.confidence")]
        assert best == sorted(best, reverse=True)

    # colours: additions green, removals red, given labels blue (the App colours by label text)
    scheme = {f["path"]: {v["value"]: v["color"] for v in f["valueColors"]} for f in ds.app_config.color_scheme.fields}
    assert ds.app_config.color_scheme.color_by == "value"
    for rec in corr.itertuples():
        assert scheme["suggestions"][f"+ {rec[3]}"] == "#2ca02c" and scheme["suggestions"][f"- {rec[3]}"] == "#d62728"
    assert set(scheme["ground_truth"]) == set(names)
    assert ds.app_config.active_fields.paths == ["ground_truth", "detections", "suggestions"]


def test_detections_from_source_coco(fo, review):
    """The original COCO boxes come in as a Detections field with relative [x, y, w, h]."""
    import json

    run_dir, ds, s = review
    src = json.loads((run_dir / "source.json").read_text())["path"]
    coco = json.loads(open(src).read())
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    want = {}
    for a in coco["annotations"]:
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        want.setdefault(a["image_id"], []).append((cats[a["category_id"]], (x / w, y / h, bw / w, bh / h), a["id"]))
    assert s.boxes == len(coco["annotations"]) > 0
    for sample in ds:
        got = sorted(((d.annotation_id, d.label, tuple(d.bounding_box)) for d in sample.detections.detections))
        exp = sorted((i, name, box) for name, box, i in want.get(sample.image_id, []))
        assert [g[:2] for g in got] == [e[:2] for e in exp]
        if exp:
            np.testing.assert_allclose([g[2] for g in got], [e[2] for e in exp])


def test_negatives_field_and_reader(fo, demo_data, tmp_path):
    """LVIS-style data: explicit negatives; the FiftyOne reader gives the run's labels back."""
    from labelfix.io import read_labels
    from labelfix.review.dataset import build_review_dataset

    run_dir = make_run(demo_data, tmp_path / "run", lvis=True, seed=2)
    ls = LabelSet.load(run_dir)
    ds, _ = build_review_dataset(run_dir, unique())
    try:
        row_of = {int(i): r for r, i in enumerate(ls.images["image_id"])}
        for sample in ds:
            r = row_of[sample.image_id]
            assert sorted(_labels(sample.negatives)) == sorted(
                ls.class_names[k] for k in np.flatnonzero(ls.labels[r] == NEG))
        # the App shows the known negatives (grey) with the given labels, boxes and suggestions
        assert ds.app_config.active_fields.paths == ["ground_truth", "detections", "negatives", "suggestions"]
        colors = {f["path"]: f for f in ds.app_config.color_scheme.fields}
        assert {v["color"] for v in colors["negatives"]["valueColors"]} == {"#8c8c8c"}
        back = read_labels(f"fiftyone://{ds.name}/ground_truth")
        assert back.source["format"] == "fiftyone" and back.source["unlabeled"] == "unknown"
        order = np.array([row_of[i] for i in back.images["image_id"]])
        np.testing.assert_array_equal(np.asarray(back.labels), np.asarray(ls.labels)[order])
        assert back.class_names == ls.class_names
        # every image resolves to the same file
        assert all(back.image_path(j) == ls.image_path(order[j]).resolve() for j in range(len(order)))
        # without the negatives field and --unlabeled negative: exhaustive
        from labelfix.io.fiftyone import read_fiftyone

        ex = read_fiftyone(f"fiftyone://{ds.name}", negatives_field=None)
        np.testing.assert_array_equal(np.asarray(ex.labels), np.where(np.asarray(ls.labels)[order] == POS, POS, NEG))
    finally:
        ds.delete()


def test_reader_errors(fo):
    from labelfix.errors import LabelfixError
    from labelfix.io import read_labels

    with pytest.raises(LabelfixError, match="not found"):
        read_labels(f"fiftyone://{unique('missing')}")
    ds = fo.Dataset(unique())
    ds.add_sample(fo.Sample(filepath="/tmp/a.png", det=fo.Detections(detections=[])))
    try:
        with pytest.raises(LabelfixError, match="is not a Classification"):
            read_labels(f"fiftyone://{ds.name}/det")
        with pytest.raises(LabelfixError, match="has no field 'nope'"):
            read_labels(f"fiftyone://{ds.name}/nope")
    finally:
        ds.delete()


def test_rerun_is_idempotent_and_keeps_decisions(fo, review):
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import accept, decisions_frame, read_decisions_csv, reject

    run_dir, ds, _ = review
    before = decisions_frame(ds)
    ds2, s2 = build_review_dataset(run_dir, ds.name)
    pd.testing.assert_frame_equal(decisions_frame(ds2), before)  # same ids, values, order
    assert len(ds2) == 40 and s2.suggestions == 12

    frame = decisions_frame(ds)
    acc = frame.iloc[[0, 2]]
    rej = frame.iloc[[1]]
    assert accept(ds, label_ids=acc["label_id"]) == 2
    assert reject(ds, label_ids=rej["label_id"]) == 1
    # a new clean: one accepted suggestion disappears, scores change, a new one appears
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    gone = (corr["image_id"].astype(int) == acc.iloc[1].image_id) & (corr["class"] == acc.iloc[1]["class"])
    corr = corr[~gone].copy()
    corr["score"] = (corr["score"].astype(float) * 0.5).round(4).astype(str)
    ls = LabelSet.load(run_dir)
    have = set(zip(corr["image_id"].astype(int), corr["class"]))
    r, k = next((r, k) for r in range(40) for k in range(10)
                if ls.labels[r, k] == NEG and (int(ls.images.at[r, "image_id"]), ls.class_names[k]) not in have)
    new = {"image_id": int(ls.images.at[r, "image_id"]), "file_name": ls.images.at[r, "file_name"],
           "class": ls.class_names[k], "category_id": int(ls.classes.at[k, "category_id"]), "given": "0",
           "suggested": 1, "action": "add", "state": "re-labeled", "score": 0.99, "p_clean": 0.05,
           "probability": 0.97}
    corr = pd.concat([pd.DataFrame([new]), corr], ignore_index=True)
    corr.to_csv(run_dir / "corrections.csv", index=False)

    ds3, s3 = build_review_dataset(run_dir, ds.name)
    after = decisions_frame(ds3)
    assert len(after) == 12 and (s3.accepted, s3.rejected, s3.to_review) == (1, 1, 10)
    key = lambda f: dict(zip(zip(f.image_id, f["class"]), f.decision))  # noqa: E731
    got = key(after)
    assert got[(acc.iloc[0].image_id, acc.iloc[0]["class"])] == "accepted"
    assert got[(rej.iloc[0].image_id, rej.iloc[0]["class"])] == "rejected"
    assert got[(new["image_id"], new["class"])] == ""
    assert after.iloc[0]["score"] == pytest.approx(0.99)
    # the kept suggestions keep their label ids
    ids = dict(zip(zip(before.image_id, before["class"]), before.label_id))
    assert all(ids[kk] == lid for kk, lid in zip(zip(after.image_id, after["class"]), after.label_id) if kk in ids)
    # RUN/decisions.csv mirrors the dataset
    csv = read_decisions_csv(run_dir)
    assert key(csv) == got

    # a dataset created afresh restores the decisions from decisions.csv
    name = ds.name
    ds3.delete()
    ds4, s4 = build_review_dataset(run_dir, name)
    assert key(decisions_frame(ds4)) == got and s4.restored_decisions == 2


def test_a_label_tagged_both_ways_stays_to_review_and_is_named(fo, review):
    """A suggestion tagged accepted AND rejected by hand is undecided: the to_review view
    keeps it and review says how many there are (before, the view hid it silently)."""
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame

    run_dir, ds, summary = review
    assert len(ds.load_saved_view("to_review").values("suggestions.classifications", unwind=True)) == 12
    label_id = decisions_frame(ds).label_id.iloc[0]
    ds.select_labels(ids=[label_id], fields="suggestions").tag_labels(["accepted", "rejected"])
    ds2, s2 = build_review_dataset(run_dir, ds.name)
    in_view = ds2.load_saved_view("to_review").values("suggestions.classifications.id", unwind=True)
    assert label_id in in_view and len(in_view) == 12
    assert s2.accepted == s2.rejected == 0 and s2.to_review == 12
    assert any("1 suggestions are tagged both 'accepted' and 'rejected'" in n for n in s2.notes)


def test_a_deleted_samples_decision_comes_back_from_decisions_csv(fo, review):
    """A decided suggestion whose sample was deleted from the dataset gets its decision
    back from decisions.csv when review rebuilds it (before, review re-added the sample
    undecided and overwrote the decision with nothing)."""
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import accept, decisions_frame, read_decisions_csv, sync_decisions

    run_dir, ds, _ = review
    row = decisions_frame(ds).iloc[0]
    accept(ds, label_ids=[row.label_id])
    sync_decisions(ds)
    ds.delete_samples([row.sample_id])
    ds2, s2 = build_review_dataset(run_dir, ds.name)
    f = decisions_frame(ds2)
    back = f[(f.image_id == row.image_id) & (f["class"] == row["class"])]
    assert list(back.decision) == ["accepted"] and s2.accepted == 1 and s2.restored_decisions == 1
    csv = read_decisions_csv(run_dir)
    assert (csv.decision == "accepted").sum() == 1


def test_review_without_name_keeps_the_runs_dataset_and_a_switch_carries_decisions(fo, review):
    """review RUN without --name uses the dataset the last review recorded (before, it went
    back to the default name and decisions.csv lost the named dataset's decisions); an
    explicit switch to another dataset brings decisions.csv's decisions into it, names
    the switch, and counts the suggestions decided differently there."""
    from labelfix.review.dataset import build_review_dataset, recorded_dataset_name
    from labelfix.review.decisions import accept, decisions_frame, read_decisions_csv, reject, sync_decisions
    from labelfix.run import load_run

    run_dir, ds, _ = review
    frame = decisions_frame(ds)
    accept(ds, label_ids=frame.label_id.iloc[[0, 1]])
    sync_decisions(ds)
    again, s = build_review_dataset(run_dir)            # no name: the recorded one
    assert again.name == ds.name and s.accepted == 2
    assert (read_decisions_csv(run_dir).decision == "accepted").sum() == 2

    other = unique()
    try:
        ds2, s2 = build_review_dataset(run_dir, other)   # a new dataset: decisions carried over
        assert s2.accepted == 2 and s2.restored_decisions == 2
        assert any(f"is now {other!r} (was {ds.name!r})" in n for n in s2.notes)
        assert recorded_dataset_name(load_run(run_dir)) == other
        f2 = decisions_frame(ds2)
        reject(ds2, label_ids=f2.label_id.iloc[[0]])     # decided differently in the new one
        accept(ds2, label_ids=f2.label_id.iloc[[2]])
        sync_decisions(ds2)
        back, s3 = build_review_dataset(run_dir, ds.name)  # back to the first: its tags win
        f3 = decisions_frame(back)
        assert list(f3.decision.iloc[:3]) == ["accepted", "accepted", "accepted"]
        assert s3.restored_decisions == 1
        assert any("1 suggestions decided differently there keep this dataset's decision" in n for n in s3.notes)
    finally:
        if fo.dataset_exists(other):
            fo.load_dataset(other).delete()


def test_a_switch_hands_the_run_over_and_a_deleted_dataset_comes_back(fo, review, monkeypatch):
    """After `review --name B` the old dataset is no longer the run's (its tag goes), its
    tag-button decisions are synced before they are brought over, an imported accept value
    comes along without being imported again; when B is deleted, clean's sync says so and
    keeps decisions.csv, and review rebuilds B from it. A database that does not start is
    a note for clean's sync, not a crash."""
    from labelfix.review import dataset as review_dataset
    from labelfix.review.dataset import build_review_dataset, run_tag
    from labelfix.review.decisions import decisions_frame, read_decisions_csv, refresh_decisions
    from labelfix.run import load_run

    run_dir, ds, _ = review
    f = decisions_frame(ds)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    first = (corr["image_id"].astype(int) == f.image_id.iloc[0]) & (corr["class"] == f["class"].iloc[0])
    corr["accept"] = np.where(first, "yes", "")
    corr.to_csv(run_dir / "corrections.csv", index=False)
    build_review_dataset(run_dir, ds.name)                      # imports "yes"
    ds.select_labels(ids=[f.label_id.iloc[0]], fields="suggestions").untag_labels("accepted", label_fields="suggestions")
    ds.select_labels(ids=list(f.label_id.iloc[[0, 1]]), fields="suggestions").tag_labels(
        "rejected", label_fields="suggestions")                  # tag button, not synced
    other = unique()
    try:
        b, s = build_review_dataset(run_dir, other)
        got = dict(zip(zip(decisions_frame(b).image_id, decisions_frame(b)["class"]), decisions_frame(b).decision))
        assert [got[k] for k in zip(f.image_id.iloc[:2], f["class"].iloc[:2])] == ["rejected", "rejected"]
        assert s.imported_decisions == 0 and not any("edited accept cells" in n for n in s.notes)
        assert run_tag(load_run(run_dir)) not in fo.load_dataset(ds.name).tags
        assert run_tag(load_run(run_dir)) in b.tags
        b.delete()
        note = refresh_decisions(run_dir)
        assert note and f"the review dataset {other!r} no longer exists" in note
        assert (read_decisions_csv(run_dir).decision == "rejected").sum() == 2
        again, s2 = build_review_dataset(run_dir)
        assert again.name == other and s2.rejected == 2

        def broken(*a, **k):
            raise RuntimeError("could not connect to the database\nsecond line")

        monkeypatch.setattr(review_dataset, "run_dataset_name", broken)
        note = refresh_decisions(run_dir)
        assert "not readable: RuntimeError: could not connect to the database" in note and "second" not in note
    finally:
        if fo.dataset_exists(other):
            fo.load_dataset(other).delete()


def test_a_renamed_review_dataset_is_found_by_its_run_tag(fo, review):
    """A review dataset renamed in Python is still the run's dataset: review and export
    without --name find it by its run tag (before, review created a new dataset under
    the old name); two datasets with the tag are refused with a line naming both."""
    from labelfix.errors import LabelfixError
    from labelfix.review.dataset import build_review_dataset, load_review_dataset
    from labelfix.review.decisions import accept, decisions_frame

    run_dir, ds, _ = review
    accept(ds, label_ids=decisions_frame(ds).label_id.iloc[[0]])
    old, new = ds.name, unique()
    ds.name = new
    try:
        again, s = build_review_dataset(run_dir)
        assert again.name == new and s.accepted == 1 and not fo.dataset_exists(old)
        assert any(f"using dataset {new!r}, found by this run's tag" in n and f"named {old!r}" in n for n in s.notes)
        assert load_review_dataset(run_dir).name == new
        copy = again.clone(old, persistent=True)         # a clone keeps the tag: which one is meant?
        copy.name = unique()
        again.name = unique()
        with pytest.raises(LabelfixError, match="all belong to this run; pass --name to choose one"):
            build_review_dataset(run_dir)
    finally:
        for n in fo.list_datasets():
            if n in (new, old) or fo.load_dataset(n).info.get("labelfix_run") == str(run_dir.resolve()):
                fo.delete_dataset(n)


def test_an_archived_decision_written_back_by_clean_counts_once(fo, review):
    """A decision archived by review and written into the accept column by a later clean
    is one restored decision, not also an imported one."""
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import accept, decisions_frame, sync_decisions

    run_dir, ds, _ = review
    row = decisions_frame(ds).iloc[0]
    accept(ds, label_ids=[row.label_id])
    sync_decisions(ds)
    corr = pd.read_csv(run_dir / "corrections.csv", dtype=str, keep_default_na=False)
    same = (corr["image_id"].astype(int) == row.image_id) & (corr["class"] == row["class"])
    corr[~same].to_csv(run_dir / "corrections.csv", index=False)
    _, s1 = build_review_dataset(run_dir, ds.name)       # the decided suggestion is archived
    assert s1.archived_decisions == 1
    corr["accept"] = np.where(same, "yes", "")           # as clean writes it back
    corr.to_csv(run_dir / "corrections.csv", index=False)
    ds2, s2 = build_review_dataset(run_dir, ds.name)
    assert (s2.accepted, s2.restored_decisions, s2.imported_decisions) == (1, 1, 0)
    # restored from decisions.csv into a fresh dataset but changed by an edited cell: imported only
    name = ds2.name
    ds2.delete()
    corr["accept"] = np.where(same, "no", "")
    corr.to_csv(run_dir / "corrections.csv", index=False)
    _, s3 = build_review_dataset(run_dir, name)
    assert (s3.rejected, s3.restored_decisions, s3.imported_decisions) == (1, 0, 1)


def test_a_reviewers_own_tags_come_back_with_the_decisions(fo, review):
    """A suggestion's own label tags (a reviewer's "unsure", with or without a decision)
    are kept in decisions.csv and come back when the dataset is created afresh (before,
    only accepted / rejected came back); a damaged other_tags cell is one line."""
    from labelfix.errors import LabelfixError
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import accept, read_decisions_csv, sync_decisions

    run_dir, ds, _ = review
    ids = [c.id for smp in ds.iter_samples() for c in smp.suggestions.classifications][:2]
    ds.select_labels(ids=ids, fields="suggestions").tag_labels(["unsure", "a, b"], label_fields="suggestions")
    accept(ds, label_ids=ids[:1])
    sync_decisions(ds)
    import json

    assert sorted(sorted(json.loads(t)) for t in read_decisions_csv(run_dir).other_tags if t) == [["a, b", "unsure"]] * 2
    name = ds.name
    ds.delete()
    ds2, s2 = build_review_dataset(run_dir, name)
    tags = {c.id: sorted(c.tags) for smp in ds2.iter_samples() for c in smp.suggestions.classifications}
    assert s2.accepted == 1
    assert sorted(tags.values(), key=len)[-2:] == [["a, b", "unsure"], ["a, b", "accepted", "unsure"]]

    csv = pd.read_csv(run_dir / "decisions.csv", dtype=str, keep_default_na=False)
    csv.loc[0, "other_tags"] = "unsure"   # not a JSON list
    csv.to_csv(run_dir / "decisions.csv", index=False)
    with pytest.raises(LabelfixError, match=r"decisions.csv: row 2: other_tags 'unsure' must be a JSON list"):
        read_decisions_csv(run_dir)


def test_other_run_same_name_is_refused(fo, review, demo_data, tmp_path):
    from labelfix.errors import LabelfixError
    from labelfix.review.dataset import build_review_dataset

    _, ds, _ = review
    other = make_run(demo_data, tmp_path / "other")
    with pytest.raises(LabelfixError, match="belongs to another run"):
        build_review_dataset(other, ds.name)
    from labelfix.export.coco import export_cleaned_coco

    with pytest.raises(LabelfixError, match="belongs to another run"):   # export reads no other run's decisions
        export_cleaned_coco(other, tmp_path / "x.json", source="fiftyone", dataset_name=ds.name)
    assert not (tmp_path / "x.json").exists()


def test_operators_change_exactly_the_targets(fo, review):
    import fiftyone.operators as foo

    from labelfix.review.decisions import decisions_frame

    run_dir, ds, _ = review
    uri = "@labelfix/review/accept_suggestions"
    rej_uri = "@labelfix/review/reject_suggestions"
    frame = decisions_frame(ds)

    # selected labels
    picked = frame.iloc[[0, 3]]
    sel = [{"label_id": r.label_id, "sample_id": r.sample_id, "field": "suggestions"} for r in picked.itertuples()]
    res = foo.execute_operator(uri, ctx=dict(dataset=ds, selected_labels=sel, params={"target": "selected_labels"}))
    assert res.result["count"] == 2
    f = decisions_frame(ds)
    assert set(f.loc[f.decision == "accepted", "label_id"]) == set(picked.label_id)
    assert (f.decision != "").sum() == 2

    # no target given, a ground_truth label selected: nothing is decided, not the whole view
    gt = ds.first().ground_truth.classifications[0]
    res = foo.execute_operator(rej_uri, ctx=dict(dataset=ds, selected_labels=[
        {"label_id": gt.id, "sample_id": ds.first().id, "field": "ground_truth"}]))
    assert res.result["count"] == 0 and res.result["target"] == "selected_labels"
    assert (decisions_frame(ds).decision != "").sum() == 2

    # selected samples, restricted by the current view (the removals saved view)
    removals = ds.load_saved_view("removals")
    samples = removals.values("id")[:2]
    res = foo.execute_operator(rej_uri, ctx=dict(dataset=ds, view=removals, selected=samples,
                                                 params={"target": "selected_samples"}))
    expected = set(f[(f.sample_id.isin(samples)) & (f.action == "remove")].label_id)
    assert res.result["count"] == len(expected) > 0
    f = decisions_frame(ds)
    assert set(f.loc[f.decision == "rejected", "label_id"]) == expected
    assert set(f.loc[f.decision == "accepted", "label_id"]) == set(picked.label_id) - expected

    # the whole current view: reject every addition; accepted ones lose 'accepted'
    additions = ds.load_saved_view("additions")
    res = foo.execute_operator(rej_uri, ctx=dict(dataset=ds, view=additions, params={"target": "view"}))
    assert res.result["count"] == 6
    f = decisions_frame(ds)
    assert set(f.loc[f.action == "add", "decision"]) == {"rejected"}
    assert set(f.loc[f.decision == "rejected", "label_id"]) == expected | set(f.loc[f.action == "add", "label_id"])
    tags = ds.values("suggestions.classifications.tags", unwind=True)
    assert not any("accepted" in t and "rejected" in t for t in tags)
    # decisions.csv synced by the operators
    csv = pd.read_csv(run_dir / "decisions.csv", keep_default_na=False)
    assert (csv.decision == "rejected").sum() == (f.decision == "rejected").sum()


def test_clean_reads_tags_set_with_the_apps_tag_button(fo, demo_data, tmp_path):
    """Label tags set with the App's tag button (no operator, no sync) are decisions for
    `labelfix clean` too: it syncs decisions.csv from the run's review dataset first
    (before, it learned from them only after a review or an operator copied them);
    without the dataset it says it uses decisions.csv as it is."""
    from click.testing import CliRunner

    from labelfix.cleaning.clean_run import clean_run
    from labelfix.cli import main
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame, read_decisions_csv

    run_dir = make_run(demo_data, tmp_path / "run")
    clean_run(run_dir, report=False)   # the suggestions clean makes again below
    ds, _ = build_review_dataset(run_dir, unique())
    f = decisions_frame(ds)
    ids = f.label_id.iloc[:2].tolist()
    ds.select_labels(ids=ids, fields="suggestions").tag_labels("rejected", label_fields="suggestions")
    assert read_decisions_csv(run_dir) is None or (read_decisions_csv(run_dir).decision != "").sum() == 0
    r = CliRunner().invoke(main, ["clean", str(run_dir), "--no-report"])
    assert r.exit_code == 0, r.output
    assert (read_decisions_csv(run_dir).decision == "rejected").sum() == 2
    assert "learned from 2 of your decisions" in r.output

    ds.delete()
    r = CliRunner().invoke(main, ["clean", str(run_dir), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "as the last review or App operator left it (the review dataset" in r.output
    assert "learned from 2 of your decisions" in r.output


def test_rerank_operator_learns_from_the_app_decisions(fo, demo_data, tmp_path):
    """Decide suggestions in the App, run the re-rank operator: clean learns from those
    decisions, the dataset is updated in place, every decision keeps its tag."""
    import fiftyone.operators as foo

    from labelfix.cleaning.clean_run import clean_run
    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame

    from labelfix.io import atomic

    run_dir = make_run(demo_data, tmp_path / "run")
    given = np.asarray(LabelSet.load(run_dir).labels)
    rng = np.random.default_rng(3)   # a judge that disagrees often: many suggestions
    atomic.write_npy(run_dir / "stats" / "logits.npy",
                     (np.where(given == POS, 1.0, -1.0) + rng.normal(0, 2.5, given.shape)).astype(np.float16))
    clean_run(run_dir, report=False, max_suggestions=60)   # the suggestions clean makes from the run's logits
    name = unique()
    ds, summary = build_review_dataset(run_dir, name, max_predictions=3)
    try:
        f = decisions_frame(ds)
        assert (f.action == "add").sum() >= 15 and (f.action == "remove").sum() >= 12, f.action.value_counts()
        adds = f[f.action == "add"].label_id.iloc[:10].tolist()
        removes = f[f.action == "remove"].label_id.iloc[:10].tolist()
        acc, rej = "@labelfix/review/accept_suggestions", "@labelfix/review/reject_suggestions"
        sel = lambda ids: [{"label_id": i, "field": "suggestions"} for i in ids]  # noqa: E731
        foo.execute_operator(acc, ctx=dict(dataset=ds, selected_labels=sel(adds), params={"target": "selected_labels"}))
        foo.execute_operator(rej, ctx=dict(dataset=ds, selected_labels=sel(removes),
                                           params={"target": "selected_labels"}))
        before = decisions_frame(ds).set_index(["image_id", "class", "action"])
        res = foo.execute_operator("@labelfix/review/rerank_suggestions", ctx=dict(dataset=ds, params={}))
        assert "learned from 20 of your decisions" in res.result["notes"], res.result
        assert "your 20 decisions so far: 10 accepted" in res.result["notes"]
        ds.reload()
        after = decisions_frame(ds).set_index(["image_id", "class", "action"])
        decided = before[before.decision != ""]
        assert len(decided) == 20
        kept = decided.index.intersection(after.index)   # rejected removals may fall below the top 60
        assert len(kept) >= 10 and after.loc[kept, "decision"].tolist() == decided.loc[kept, "decision"].tolist()
        assert res.result["to_review"] == int((after.decision == "").sum())
        # the options of the last clean and review hold: 60 suggestions, 3 predictions per sample
        assert res.result["suggestions"] == len(after) == 60
        assert max(len(s.predictions.classifications) for s in ds) == 3
        # clean learned that removals are wrong here: they are scaled down
        assert "lowest removals of" in res.result["notes"]
    finally:
        if fo.dataset_exists(name):
            fo.load_dataset(name).delete()


def test_export_from_fiftyone_and_operator(fo, review, tmp_path):
    import fiftyone.operators as foo

    from labelfix.export.coco import export_cleaned_coco
    from labelfix.io.coco import read_coco
    from labelfix.review.decisions import accept, decisions_frame, reject

    run_dir, ds, _ = review
    f = decisions_frame(ds)
    accept(ds, label_ids=f.label_id.iloc[:3])
    reject(ds, label_ids=f.label_id.iloc[3:5])
    out = tmp_path / "cleaned.json"
    res = export_cleaned_coco(run_dir, out)  # review.json exists -> decisions from FiftyOne
    assert res.notes == []
    # a rewritten corrections.csv with no other decision (a clean after review): no note
    corr_path = run_dir / "corrections.csv"
    original = corr_path.read_bytes()
    corr = pd.read_csv(corr_path, dtype=str, keep_default_na=False)
    corr.to_csv(corr_path, index=False)
    assert export_cleaned_coco(run_dir, tmp_path / "same.json").notes == []
    # accept cells the dataset does not show (set after it was built): the default export
    # refuses (it dropped them from the file the next round trains on, with a note that
    # also came when nothing differed); --from fiftyone exports the dataset and says so
    undecided = f.loc[5:, "image_id"].iloc[0], f.loc[5:, "category_id"].iloc[0]
    corr["accept"] = ""
    hit = (corr["image_id"].astype(int) == undecided[0]) & (corr["category_id"].astype(int) == undecided[1])
    corr.loc[hit, "accept"] = "yes"
    corr.to_csv(corr_path, index=False)
    with pytest.raises(LabelfixError, match=r"1 decisions in the accept column of .*corrections.csv are not in the "
                                            r"review dataset .*: `labelfix review .*` brings them in"):
        export_cleaned_coco(run_dir, tmp_path / "stale.json")
    assert not (tmp_path / "stale.json").exists()
    stale = export_cleaned_coco(run_dir, tmp_path / "stale.json", source="fiftyone")
    assert len(stale.notes) == 1 and "exported from the dataset as it is (--from fiftyone)" in stale.notes[0]
    assert stale.changes == 3 and export_cleaned_coco(run_dir, tmp_path / "csv.json", source="csv").changes == 1
    corr_path.unlink()   # the dataset alone exports (the file-time check raised FileNotFoundError)
    assert export_cleaned_coco(run_dir, tmp_path / "alone.json").changes == 3
    corr_path.write_bytes(original)
    assert res.source == "fiftyone" and res.changes == 3
    ls = LabelSet.load(run_dir)
    expect = np.array(ls.labels)
    row = {int(i): r for r, i in enumerate(ls.images["image_id"])}
    for rec in f.iloc[:3].itertuples():
        expect[row[rec.image_id], rec.class_index] = rec.suggested
    np.testing.assert_array_equal(np.asarray(read_coco(out).labels), expect)

    res = export_cleaned_coco(run_dir, tmp_path / "all.json", decisions="all")
    assert res.changes == 10  # 12 suggestions minus 2 rejected

    out2 = tmp_path / "op.json"
    r = foo.execute_operator("@labelfix/review/export_cleaned_coco",
                             ctx=dict(dataset=ds, params={"run": str(run_dir), "out": str(out2), "decisions": "accepted"}))
    assert r.result["changes"] == 3 and r.result["notes"] == ""   # the App shows the export's notes
    assert out2.read_bytes() == out.read_bytes()


def test_cli_review(fo, demo_data, tmp_path):
    from labelfix.cli import main

    run_dir = make_run(demo_data, tmp_path / "run")
    name = unique()
    r = CliRunner().invoke(main, ["review", str(run_dir), "--name", name])
    try:
        assert r.exit_code == 0, r.output
        assert f"dataset {name}: 40 samples, 12 suggestions (6 additions, 6 removals)" in r.output
        assert "0 accepted, 0 rejected, 12 to review" in r.output
    finally:
        fo.load_dataset(name).delete()
    r = CliRunner().invoke(main, ["review", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "run directory not found" in r.output


def test_start_database_in_the_background_then_build(fo, demo_data, tmp_path):
    """`labelfix demo` starts FiftyOne's database while its last round trains: the thread
    ends on its own, and a review dataset builds after it."""
    from labelfix.review.dataset import build_review_dataset, start_database

    thread = start_database()
    thread.join(timeout=120)
    assert not thread.is_alive() and thread.daemon
    name = unique()
    _, summary = build_review_dataset(make_run(demo_data, tmp_path / "run"), name)
    assert fo.dataset_exists(name) and summary.suggestions >= 0
    fo.load_dataset(name).delete()
