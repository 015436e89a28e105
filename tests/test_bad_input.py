"""Bad input: one clear error line naming the file and record, exit code 2, no traceback;
or a documented skip with a count."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from labelfix.cli import main

GOOD = {
    "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": 2}],
}


def mutate(fn):
    d = copy.deepcopy(GOOD)
    fn(d)
    return json.dumps(d)


COCO_CASES = {
    "invalid-json": ('{"images": [', "invalid JSON at line 1"),
    "not-an-object": ("[1, 2]", "expected a JSON object"),
    "missing-images": (mutate(lambda d: d.pop("images")), "missing top-level key 'images'"),
    "missing-categories": (mutate(lambda d: d.pop("categories")), "missing top-level key 'categories'"),
    "empty-categories": (mutate(lambda d: d.update(categories=[])), "'categories' is empty"),
    "duplicate-image-id": (mutate(lambda d: d["images"].append({"id": 1, "file_name": "c.png"})), "images[2]: duplicate image id 1"),
    # one file under two ids: two label rows for one image (accepted without a word before)
    "duplicate-file-name": (mutate(lambda d: d["images"][1].update(file_name="./a.png")),
                            "images[1] (id 2): file_name 'a.png' is also images[0] (id 1)"),
    "duplicate-category-id": (mutate(lambda d: d["categories"].append({"id": 2, "name": "x"})), "categories[2]: duplicate category id 2"),
    "unknown-image-id": (mutate(lambda d: d["annotations"].append({"image_id": 9, "category_id": 1})), "annotations[2]: unknown image_id 9"),
    "unknown-category-id": (mutate(lambda d: d["annotations"].append({"image_id": 1, "category_id": 5})), "annotations[2]: unknown category_id 5"),
    "string-image-id": (mutate(lambda d: d["images"][0].update(id="1")), "images[0]: 'id' must be an integer"),
    "bool-category-id": (mutate(lambda d: d["annotations"][0].update(category_id=True)), "annotations[0]: 'category_id' must be an integer"),
    "float-image-id": (mutate(lambda d: d["images"][1].update(id=2.5)), "images[1]: 'id' must be an integer"),
    "missing-file-name": (mutate(lambda d: d["images"][0].pop("file_name")), "images[0]: missing key 'file_name'"),
    "annotation-missing-category": (mutate(lambda d: d["annotations"][0].pop("category_id")), "annotations[0]: missing key 'category_id'"),
    "path-escape": (mutate(lambda d: d["images"][0].update(file_name="../../etc/passwd")), "escapes the image root"),
    "absolute-path": (mutate(lambda d: d["images"][0].update(file_name="/etc/passwd")), "is an absolute path"),
    "windows-path": (mutate(lambda d: d["images"][0].update(file_name="C:\\x\\a.png")), "is an absolute path"),
    "lvis-unknown-neg": (mutate(lambda d: d["images"][0].update(neg_category_ids=[7])), "'neg_category_ids' names unknown category id 7"),
    "annotations-not-list": (mutate(lambda d: d.update(annotations={})), "'annotations' must be a list"),
    # json keeps the last of two equal keys: the first annotations list would be dropped
    "duplicate-top-level-key": (mutate(lambda d: None)[:-1] + ', "annotations": []}',
                                "the top-level key 'annotations' appears twice"),
    # not JSON numbers; they used to be read, and written back as they were by export
    "infinite-area": (mutate(lambda d: d["annotations"][1].update(area="INF")).replace('"INF"', "Infinity"),
                      "annotations[1] (id 2) 'area' is Infinity, which is not a JSON number"),
    "nan-in-bbox": (mutate(lambda d: d["annotations"][0].update(bbox=[0, 0, "NAN", 1])).replace('"NAN"', "NaN"),
                    "annotations[0] (id 1) 'bbox' is NaN"),
}


def run(*args):
    res = CliRunner().invoke(main, list(args))
    return res


def assert_one_line_error(res, must_contain: str, file_name: str):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and file_name in lines[0], lines[0]
    assert must_contain in lines[0], lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_bad_coco(tmp_path, case):
    text, msg = COCO_CASES[case]
    p = tmp_path / f"{case}.json"
    p.write_text(text)
    before = p.read_bytes()
    assert_one_line_error(run("info", str(p)), msg, p.name)
    assert p.read_bytes() == before


CSV_CASES = {
    "wide-bad-value": ("file_name,cat\na.png,yes\n", "row 2, column 'cat': value 'yes' is not 1, 0 or unknown "
                                                        "(empty or -1); every column besides file_name"),
    "wide-no-file-name": ("image,cat\na.png,1\n", "missing column 'file_name'"),
    "wide-no-classes": ("file_name,image_id\na.png,1\n", "no class columns"),
    "wide-duplicate-file": ("file_name,cat\na.png,1\na.png,0\n", "row 3: duplicate file_name"),
    "wide-bad-image-id": ("file_name,image_id,cat\na.png,x1,1\n", "row 2: image_id 'x1' is not an integer"),
    "long-bad-value": ("file_name,label,value\na.png,cat,2\n", "row 2: value '2' is not 1, 0 or -1 (unknown)"),
    "long-duplicate-pair": ("file_name,label,value\na.png,cat,1\na.png,cat,0\n", "row 3: second value"),
    "long-path-escape": ("file_name,label,value\n../a.png,cat,1\n", "escapes the image root"),
    "openimages-bad-confidence": ("ImageID,LabelName,Confidence\nimg1,/m/01,0.5\n", "row 2: Confidence '0.5' is not 1 or 0"),
    "empty-file": ("", "empty CSV file"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(tmp_path, case):
    text, msg = CSV_CASES[case]
    p = tmp_path / f"{case}.csv"
    p.write_text(text)
    assert_one_line_error(run("info", str(p)), msg, p.name)


def test_missing_label_file(tmp_path):
    assert_one_line_error(run("info", str(tmp_path / "nope.json")), "file not found", "nope.json")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.json"
    p.write_bytes(b'{"images": "\xff\xfe"}')
    assert_one_line_error(run("info", str(p)), "not UTF-8", p.name)


def test_openimages_unknown_class(tmp_path):
    p = tmp_path / "oi.csv"
    p.write_text("ImageID,LabelName,Confidence\nimg1,/m/09,1\n")
    d = tmp_path / "desc.csv"
    d.write_text("/m/01,Cat\n")
    assert_one_line_error(run("info", str(p), "--classes", str(d)), "LabelName '/m/09' is not in", p.name)


def test_skips_are_counted(tmp_path):
    """Missing and truncated images and classes without positives are reported with
    counts (documented skips), not errors."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    full = (tmp_path / "a.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    d = copy.deepcopy(GOOD)
    d["images"][1]["file_name"] = "missing.png"
    d["images"].append({"id": 3, "file_name": "trunc.png"})
    d["categories"].append({"id": 3, "name": "never"})
    p = tmp_path / "l.json"
    p.write_text(json.dumps(d))
    res = run("info", str(p), "--json", "--verify")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["missing_files"] == ["missing.png"]
    assert out["corrupt_files"] == ["trunc.png"]
    assert out["classes_without_positives"] == ["never"]


def test_json_checks_on_odd_files(tmp_path):
    """The NaN and duplicate-key checks on files they could trip over: a lone-surrogate
    key (no crash, no false duplicate), a NaN nested deeper than the walk that names it
    (one line), a UTF-16 file and many top-level keys (duplicates still found), a key
    string repeated as a value (no false duplicate)."""
    from labelfix.errors import LabelfixError
    from labelfix.io.coco import load_json

    def read(name, data: bytes):
        (tmp_path / name).write_bytes(data)
        return load_json(tmp_path / name)

    assert list(read("s.json", b'{"\\ud800": 1, "images": []}')) == ["\ud800", "images"]
    assert read("v.json", b'{"images": [{"file_name": "images"}]}')["images"] == [{"file_name": "images"}]
    cases = [
        ("deep.json", b'{"a": ' + b"[" * 600 + b"NaN" + b"]" * 600 + b"}", "a value is NaN"),
        ("u16.json", '{"a": 1, "a": 2}'.encode("utf-16-le"), "the top-level key 'a' appears twice"),
        ("many.json", ("{" + ", ".join(f'"k{i}": {i}' for i in range(10)) + ', "k3": 1}').encode(),
         "the top-level key 'k3' appears twice"),
    ]
    for name, data, msg in cases:
        with pytest.raises(LabelfixError, match=msg) as e:
            read(name, data)
        assert "\n" not in str(e.value) and name in str(e.value)


def test_info_of_a_dataset_without_positives_says_n_a_and_writes_valid_json(tmp_path):
    """A header-only CSV (or a COCO file without images) is described, not refused; its
    imbalance ratios are undefined: 'n/a' in the text, null in --json (NaN / Infinity are
    not JSON: json.loads in strict parsers and jq reject them)."""
    p = tmp_path / "header_only.csv"
    p.write_text("file_name,cat,dog\n")
    res = run("info", str(p), "--no-files")
    assert res.exit_code == 0, res.output
    assert "CLS_Imb n/a, PN_Imb n/a (no positives)" in res.output and "nan" not in res.output
    res = run("info", str(p), "--no-files", "--json")
    d = json.loads(res.output, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert d["num_images"] == 0 and d["cls_imb"] is None and d["pn_imb"] is None


def test_info_names_the_missing_files_not_only_the_first(tmp_path):
    # the user guide says info lists them: ten by name in the text, all in --json
    p = tmp_path / "labels.csv"
    p.write_text("file_name,cat\n" + "".join(f"m{i:02d}.png,1\n" for i in range(12)))
    res = run("info", str(p))
    assert res.exit_code == 0, res.output
    assert "missing image files: 12: m00.png, m01.png" in res.output
    assert "m09.png, and 2 more (--json lists all)" in res.output
    assert "m10.png" not in res.output
    assert len(json.loads(run("info", str(p), "--json").output)["missing_files"]) == 12


def test_run_tables_read_without_pandas_type_warnings(tmp_path):
    """A large run table whose optional column is empty in some blocks of rows (p_clean of
    unscored cells) printed pandas' "mixed types" warning out of export coco; the values
    come through as written."""
    import warnings

    import pandas as pd

    from labelfix.validation import read_run_csv

    n = 300_000   # more rows than one block of pandas' type guessing
    path = tmp_path / "table.csv"
    pd.DataFrame({"image_id": range(n), "p_clean": ["0.5"] * (n - 10) + [""] * 10}).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_run_csv(path)
    assert len(frame) == n and frame["p_clean"].iloc[0] == 0.5 and frame["p_clean"].iloc[-1] == ""


def test_info_of_a_long_csv_with_its_image_column_named(tmp_path):
    """info asked the format detector again without --file-column, which then took the
    named image column for a wide file's class and refused a file it had just read."""
    p = tmp_path / "l.csv"
    p.write_text("path,label,value\nx.png,dog,1\n")
    res = run("info", str(p), "--file-column", "path", "--no-files")
    assert res.exit_code == 0 and "(csv-long)" in res.output, res.output
