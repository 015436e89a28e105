"""Property-based tests of the label readers (COCO / CSV wide / CSV long / Open Images).

Each test generates a valid file from a random structure, optionally applies one random
corruption, and checks the one property users rely on: the file either loads to exactly
the labels it encodes (compared with an oracle computed here from the generated
structure, independently of the reader), or fails with a LabelfixError whose message is
one line naming the file; through the CLI that is exit code 2, one ``error: `` line and
no traceback.

Corruptions carry an expectation: ``"error"`` (must be refused), ``"valid"`` (the
structure is still valid; compare with the oracle of the corrupted structure) or
``"either"`` (refusing and loading are both acceptable; a load must still be a
well-formed LabelSet).
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelfix.cli import main
from labelfix.errors import LabelfixError
from labelfix.io import read_labels
from labelfix.labels import NEG, POS, UNK

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SMALL_IDS = st.integers(min_value=-5, max_value=40)
IDS = st.one_of(SMALL_IDS, INT64)
# odd but legal unicode: accents, CJK, RTL, emoji, combining marks, zero-width joiner
ODD = "aZ09_-é漢字עברית😀\u0301\u200d"
NAME_CHARS = st.sampled_from(list(ODD) + [" ", "'", '"', ",", ";"])
SEGMENT = st.text(alphabet=st.sampled_from(list(ODD)), min_size=1, max_size=6)
FILE_NAME = st.builds(lambda parts, ext: "/".join(parts) + ext, st.lists(SEGMENT, min_size=1, max_size=3),
                      st.sampled_from([".jpg", ".png", "", ".JPEG"]))
CLASS_NAME = st.text(alphabet=NAME_CHARS, min_size=1, max_size=8).filter(
    lambda s: s == s.strip() and s not in ("file_name", "image_id", "width", "height") and not s.startswith("Unnamed"))
BAD_FILE_NAMES = ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "\\\\server\\share\\x.jpg",
                  "a\x00b.jpg", "", "   "]
BAD_IDS = ["1", 1.5, True, False, None, [1], {"a": 1}, 2**63, -(2**63) - 1, 2**100]


def tmp_file(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp("fuzz") / name


def assert_cli_error(path: Path, *extra: str) -> None:
    """Exit code 2, exactly one non-empty output line ``error: ...`` naming the file."""
    res = CliRunner().invoke(main, ["info", str(path), "--json", "--no-files", *extra])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and str(path) in lines[0], lines[0]
    assert "Traceback" not in res.output


def check(path: Path, expect: str, oracle: dict | None, fmt: str, **kw) -> None:
    """Load ``path`` and compare with ``oracle`` (``expect == "valid"``), or require a
    clean one-line error (``"error"``), or accept either (``"either"``)."""
    try:
        ls = read_labels(path, format=fmt, **kw)
    except LabelfixError as err:
        msg = str(err)
        assert expect != "valid", f"valid input refused: {msg}"
        assert "\n" not in msg and str(path) in msg, msg
        assert_cli_error(path, "--format", fmt)
        return
    assert expect != "error", "invalid input accepted"
    n, k = ls.labels.shape
    assert ls.labels.dtype == np.int8 and set(np.unique(ls.labels)) <= {POS, NEG, UNK}
    assert len(ls.images) == n and len(ls.classes) == k
    if expect == "valid":
        np.testing.assert_array_equal(ls.labels, oracle["labels"])
        assert ls.images["file_name"].tolist() == oracle["file_names"]
        assert ls.classes["name"].tolist() == oracle["class_names"]
        if "image_ids" in oracle:
            assert ls.images["image_id"].tolist() == oracle["image_ids"]
        if "category_ids" in oracle:
            assert ls.classes["category_id"].tolist() == oracle["category_ids"]


# =========================================================================== COCO
@st.composite
def coco_structs(draw) -> dict:
    k = draw(st.integers(1, 4))
    cat_ids = draw(st.lists(IDS, min_size=k, max_size=k, unique=True))
    cat_names = draw(st.lists(CLASS_NAME, min_size=k, max_size=k, unique=True))   # duplicate names: "dup-name"
    cats = [{"id": c, "name": n, **({"supercategory": "x"} if draw(st.booleans()) else {})}
            for c, n in zip(cat_ids, cat_names)]
    n = draw(st.integers(0, 5))
    img_ids = draw(st.lists(IDS, min_size=n, max_size=n, unique=True))
    lvis = draw(st.booleans())
    images = []
    names = draw(st.lists(FILE_NAME, min_size=n, max_size=n, unique=True))   # one file, one record
    for i, name in zip(img_ids, names):
        im = {"id": i, "file_name": name}
        for key in ("width", "height"):
            v = draw(st.one_of(st.none(), st.integers(0, 5000), st.just("absent")))
            if v != "absent":
                im[key] = v
        if lvis:
            if draw(st.booleans()):
                im["neg_category_ids"] = draw(st.lists(st.sampled_from(cat_ids), max_size=3))
            if draw(st.booleans()):
                im["not_exhaustive_category_ids"] = draw(st.lists(st.sampled_from(cat_ids), max_size=2))
        images.append(im)
    anns = []
    if n:
        for a_id, (r, c) in enumerate(draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, k - 1)),
                                                     max_size=8))):
            a = {"id": a_id + 1, "image_id": img_ids[r], "category_id": cat_ids[c]}
            if draw(st.booleans()):
                a.update(bbox=[0.0, 1.0, 2.0, 3.0], area=6.0, iscrowd=0)
            anns.append(a)
    data = {"images": images, "categories": cats}
    if anns or draw(st.booleans()):
        data["annotations"] = anns
    meta = draw(st.sampled_from([None, "negative", "unknown"]))
    if meta:
        data["labelfix"] = {"unlabeled": meta}
    if draw(st.booleans()):
        data["info"] = {"description": draw(st.text(max_size=10))}
    return data


def coco_oracle(data: dict) -> dict:
    cats = sorted(data["categories"], key=lambda c: c["id"])
    col = {c["id"]: j for j, c in enumerate(cats)}
    row = {im["id"]: i for i, im in enumerate(data["images"])}
    lvis = any("neg_category_ids" in im or "not_exhaustive_category_ids" in im for im in data["images"])
    unlabeled = (data.get("labelfix") or {}).get("unlabeled") or ("unknown" if lvis else "negative")
    labels = np.full((len(row), len(col)), UNK if unlabeled == "unknown" else NEG, np.int8)
    for im in data["images"]:
        for c in im.get("neg_category_ids", []):
            labels[row[im["id"]], col[c]] = NEG
    for a in data.get("annotations", []):
        labels[row[a["image_id"]], col[a["category_id"]]] = POS
    return {"labels": labels, "file_names": [im["file_name"] for im in data["images"]],
            "class_names": [c["name"] for c in cats], "image_ids": [im["id"] for im in data["images"]],
            "category_ids": [c["id"] for c in cats]}


def corrupt_coco(data: dict, draw) -> tuple[object, str]:
    """One random corruption: returns (new dict or raw text/bytes, expectation)."""
    d = copy.deepcopy(data)
    kind = draw(st.sampled_from([
        "none", "drop-top", "drop-record-key", "bad-id", "dup-image", "dup-file", "dup-cat", "unknown-ref", "bad-file-name",
        "bad-neg", "bad-size", "not-list", "not-object-record", "top-not-object", "truncate", "bad-utf8",
        "deep-nesting", "extra-keys", "nan-id", "empty-categories", "bad-meta", "bad-name", "dup-name",
    ]))
    imgs, cats, anns = d["images"], d["categories"], d.get("annotations", [])
    if kind == "drop-top":
        d.pop(draw(st.sampled_from(["images", "categories"])))
        return d, "error"
    if kind == "drop-record-key":
        options = [(im, key) for im in imgs for key in ("id", "file_name")] + \
                  [(c, key) for c in cats for key in ("id", "name")] + \
                  [(a, key) for a in anns for key in ("image_id", "category_id")]
        rec, key = draw(st.sampled_from(options))
        rec.pop(key)
        return d, "error"
    if kind in ("bad-id", "nan-id"):
        options = [(im, "id") for im in imgs] + [(c, "id") for c in cats] + \
                  [(a, key) for a in anns for key in ("image_id", "category_id")]
        rec, key = draw(st.sampled_from(options))
        if kind == "nan-id":
            rec[key] = "__NAN__"
            return json.dumps(d).replace('"__NAN__"', draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]))), "error"
        rec[key] = draw(st.sampled_from(BAD_IDS))
        return d, "error"
    if kind == "dup-image" and imgs:
        imgs.append({**copy.deepcopy(draw(st.sampled_from(imgs))), "file_name": "dup.jpg"})
        return d, "error"
    if kind == "dup-file" and len(imgs) > 1:   # another record of the same file, spelled the same or with ./
        imgs[1]["file_name"] = draw(st.sampled_from(["", "./"])) + imgs[0]["file_name"]
        return d, "error"
    if kind == "dup-cat":
        cats.append({"id": draw(st.sampled_from(cats))["id"], "name": "dup"})
        return d, "error"
    if kind == "unknown-ref":
        used_i, used_c = {im["id"] for im in imgs}, {c["id"] for c in cats}
        if imgs and draw(st.booleans()):
            d.setdefault("annotations", []).append(
                {"image_id": imgs[0]["id"], "category_id": max(used_c) + 1 if max(used_c) < 2**63 - 1 else min(used_c) - 1})
        else:
            bad = max(used_i | {0}) + 1 if max(used_i | {0}) < 2**63 - 1 else min(used_i) - 1
            d.setdefault("annotations", []).append({"image_id": bad, "category_id": cats[0]["id"]})
        return d, "error"
    if kind == "bad-file-name" and imgs:
        draw(st.sampled_from(imgs))["file_name"] = draw(st.sampled_from(BAD_FILE_NAMES + [5, None, ["a.jpg"]]))
        return d, "error"
    if kind == "bad-neg" and imgs:
        im = draw(st.sampled_from(imgs))
        key = draw(st.sampled_from(["neg_category_ids", "not_exhaustive_category_ids"]))
        im[key] = draw(st.sampled_from([[max(c["id"] for c in cats) + 1 if max(c["id"] for c in cats) < 2**63 - 1
                                          else min(c["id"] for c in cats) - 1], "1,2", 3, [True], [1.5], {"a": 1}]))
        return d, "error"
    if kind == "bad-size" and imgs:
        im = draw(st.sampled_from(imgs))
        im[draw(st.sampled_from(["width", "height"]))] = draw(st.sampled_from(["abc", [1], {"w": 1}, -1, 2**70]))
        return d, "error"
    if kind == "not-list":
        d[draw(st.sampled_from(["images", "categories", "annotations"]))] = draw(st.sampled_from([{}, "x", 1, None]))
        return d, "error"
    if kind == "not-object-record":
        lst = draw(st.sampled_from([imgs, cats] + ([anns] if "annotations" in d else [])))
        lst.append(draw(st.sampled_from([1, "x", None, [1]])))
        return d, "error"
    if kind == "top-not-object":
        return json.dumps(draw(st.sampled_from([[d], "x", 1, None]))), "error"
    if kind == "truncate":
        text = json.dumps(d)
        return text[: draw(st.integers(0, len(text) - 1))], "error"
    if kind == "bad-utf8":
        text = json.dumps(d, ensure_ascii=False).encode()
        at = draw(st.integers(0, len(text)))
        return text[:at] + b"\xff\xfe" + text[at:], "error"
    if kind == "deep-nesting":
        d["info"] = "__DEEP__"
        depth = draw(st.sampled_from([50, 100_000]))
        return json.dumps(d).replace('"__DEEP__"', "[" * depth + "]" * depth), "either"
    if kind == "extra-keys":
        d["extra"] = {"x": [1, 2]}
        for rec in imgs + cats + anns:
            rec["zz_extra"] = draw(st.sampled_from([None, 1, "a", [1], {"b": 2}]))
        return d, "valid"
    if kind == "empty-categories":
        d["categories"] = []
        d.pop("annotations", None)
        for im in imgs:
            im.pop("neg_category_ids", None)
            im.pop("not_exhaustive_category_ids", None)
        return d, "error"
    if kind == "bad-meta":
        d["labelfix"] = draw(st.sampled_from([{"unlabeled": "maybe"}, {"unlabeled": 3}, {"image_root": 5},
                                              {"image_root": ["a"]}, {"image_root": "a\x00b"}]))
        return d, "error"
    if kind == "bad-name":
        draw(st.sampled_from(cats))["name"] = draw(st.sampled_from(["", " ", "\t", 5, None, ["a"]]))
        return d, "error"
    if kind == "dup-name":   # two categories with one name: a class the user cannot tell apart
        cats.append({"id": max(c["id"] for c in cats) + 1 if max(c["id"] for c in cats) < 2**63 - 1
                     else min(c["id"] for c in cats) - 1, "name": draw(st.sampled_from(cats))["name"]})
        return d, "error"
    return d, "valid"


@SETTINGS
@given(data=coco_structs(), draw=st.data())
def test_fuzz_coco(tmp_path_factory, data, draw):
    content, expect = corrupt_coco(data, draw.draw)
    path = tmp_file(tmp_path_factory, "labels.json")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=draw.draw(st.booleans())), encoding="utf-8")
    oracle = coco_oracle(content) if expect == "valid" else None
    check(path, expect, oracle, "coco")


# =========================================================================== CSV wide
def to_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


VALUE = st.sampled_from(["1", "0", "", "1.0", "0.0", " 1", " 0", "-1", "TRUE", "false"])
CODE = {"1": POS, "1.0": POS, " 1": POS, "0": NEG, "0.0": NEG, " 0": NEG, "": UNK, "-1": UNK, "TRUE": POS,
        "false": NEG}


@st.composite
def wide_structs(draw) -> dict:
    k = draw(st.integers(1, 4))
    classes = draw(st.lists(CLASS_NAME, min_size=k, max_size=k, unique=True))
    n = draw(st.integers(0, 5))
    files = draw(st.lists(FILE_NAME, min_size=n, max_size=n, unique=True))
    values = [[draw(VALUE) for _ in range(k)] for _ in range(n)]
    ids = draw(st.one_of(st.none(), st.lists(INT64, min_size=n, max_size=n, unique=True)))
    return {"classes": classes, "files": files, "values": values, "ids": ids}


def wide_rows(s: dict) -> list[list[str]]:
    header = (["image_id"] if s["ids"] is not None else []) + ["file_name"] + s["classes"]
    rows = [header]
    for r, (f, vals) in enumerate(zip(s["files"], s["values"])):
        rows.append(([str(s["ids"][r])] if s["ids"] is not None else []) + [f] + vals)
    return rows


def wide_oracle(s: dict) -> dict:
    n, k = len(s["files"]), len(s["classes"])
    labels = np.array([[CODE[v] for v in row] for row in s["values"]], np.int8).reshape(n, k)
    out = {"labels": labels, "file_names": s["files"], "class_names": s["classes"],
           "category_ids": list(range(1, k + 1))}
    out["image_ids"] = list(s["ids"]) if s["ids"] is not None else list(range(1, n + 1))
    return out


def corrupt_table(s: dict, draw, key_col: str, value_col: str | None, bad_values: list[str]):
    """Corruptions shared by the CSV formats; ``rows`` is the list-of-lists table."""
    rows = s["rows"]
    kind = draw(st.sampled_from(["none", "bad-value", "bad-file-name", "drop-column", "dup-row", "short-row",
                                 "long-row", "bad-utf8", "empty-file", "nul-byte", "header-only", "bom"]))
    header = rows[0]
    body = rows[1:]
    if kind == "bad-value" and body:
        r = draw(st.integers(0, len(body) - 1))
        cols = [j for j, h in enumerate(header) if (h == value_col if value_col else h not in
                                                     ("file_name", "image_id", "width", "height"))]
        body[r][draw(st.sampled_from(cols))] = draw(st.sampled_from(bad_values))
        return to_csv(rows), "error"
    if kind == "bad-file-name" and body and key_col in header:
        r = draw(st.integers(0, len(body) - 1))
        body[r][header.index(key_col)] = draw(st.sampled_from([b for b in BAD_FILE_NAMES if b.strip() and "\x00" not in b]))
        return to_csv(rows), "error"
    if kind == "drop-column":
        j = draw(st.sampled_from([header.index(key_col)] + ([header.index(value_col)] if value_col else [])))
        return to_csv([r[:j] + r[j + 1:] for r in rows]), "error"
    if kind == "dup-row" and body:
        rows.append(list(draw(st.sampled_from(body))))
        return to_csv(rows), "error"
    if kind == "short-row" and body and len(header) > 2:
        r = draw(st.integers(1, len(rows) - 1))
        rows[r] = rows[r][:-1]
        return to_csv(rows), "either"
    if kind == "long-row" and body:
        r = draw(st.integers(1, len(rows) - 1))
        rows[r] = rows[r] + ["1", "extra"]
        return to_csv(rows), "error"
    if kind == "bad-utf8":
        text = to_csv(rows).encode()
        at = draw(st.integers(0, len(text)))
        return text[:at] + b"\xff\xfe" + text[at:], "error"
    if kind == "empty-file":
        return "", "error"
    if kind == "nul-byte":
        text = to_csv(rows)
        at = draw(st.integers(0, len(text)))
        return text[:at] + "\x00" + text[at:], "either"
    if kind == "header-only":
        return to_csv(rows[:1]), "either"
    if kind == "bom":
        return "\ufeff" + to_csv(rows), "either"
    return to_csv(rows), "valid"


def write_content(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))


@SETTINGS
@given(s=wide_structs(), draw=st.data())
def test_fuzz_csv_wide(tmp_path_factory, s, draw):
    s["rows"] = wide_rows(s)
    kind = draw.draw(st.sampled_from(["table", "dup-class", "empty-class", "bad-image-id", "dup-image-id",
                                      "dup-file-name", "no-class"]))
    rows = s["rows"]
    fi = rows[0].index("file_name")
    expect = "error"
    if kind == "dup-class":
        rows = [r + [r[-1]] for r in rows]
        rows[0][-1] = rows[0][-2]
        content = to_csv(rows)
    elif kind == "empty-class":
        rows = [r + ["1"] for r in rows]
        rows[0][-1] = ""
        content = to_csv(rows)
    elif kind == "bad-image-id" and len(rows) > 1:
        rows = [["image_id"] + r for r in rows] if rows[0][0] != "image_id" else rows
        rows[1][0] = draw.draw(st.sampled_from(["x", "1.5", "", str(2**64), str(-(2**63) - 1), "1e3", "True"]))
        content = to_csv(rows)
    elif kind == "dup-image-id" and len(rows) > 2:
        rows = [["image_id"] + r for r in rows] if rows[0][0] != "image_id" else rows
        rows[2][0] = rows[1][0]
        content = to_csv(rows)
    elif kind == "dup-file-name" and len(rows) > 2:
        rows[2][fi] = rows[1][fi]
        content = to_csv(rows)
    elif kind == "no-class":
        content = to_csv([r[: fi + 1] for r in rows])
    else:
        content, expect = corrupt_table(s, draw.draw, "file_name", None, ["2", "-2", "yes", "x", "1.5", "nan"])
    path = tmp_file(tmp_path_factory, "labels.csv")
    write_content(path, content)
    check(path, expect, wide_oracle(s) if expect == "valid" else None, "csv-wide")


# =========================================================================== CSV long
@st.composite
def long_structs(draw) -> dict:
    classes = draw(st.lists(CLASS_NAME, min_size=1, max_size=4, unique=True))
    files = draw(st.lists(FILE_NAME, min_size=1, max_size=4, unique=True))
    pairs = draw(st.lists(st.tuples(st.sampled_from(files), st.sampled_from(classes)), min_size=1, max_size=10,
                          unique=True))
    return {"pairs": pairs, "values": [draw(st.sampled_from(["1", "0", "1.0", "0.0", "-1", "True"])) for _ in pairs],
            "pad": draw(st.booleans())}


def long_rows(s: dict) -> list[list[str]]:
    rows = [["file_name", "label", "value"] + (["note"] if s["pad"] else [])]
    for (f, c), v in zip(s["pairs"], s["values"]):
        rows.append([f, c, v] + (["n"] if s["pad"] else []))
    return rows


def long_oracle(s: dict) -> dict:
    files = list(dict.fromkeys(f for f, _ in s["pairs"]))
    names = sorted({c for _, c in s["pairs"]})
    labels = np.full((len(files), len(names)), UNK, np.int8)
    for (f, c), v in zip(s["pairs"], s["values"]):
        labels[files.index(f), names.index(c)] = {"1": POS, "true": POS, "0": NEG, "-1": UNK}[v.lower().split(".")[0]]
    return {"labels": labels, "file_names": files, "class_names": names, "category_ids": list(range(1, len(names) + 1))}


@SETTINGS
@given(s=long_structs(), draw=st.data())
def test_fuzz_csv_long(tmp_path_factory, s, draw):
    s["rows"] = long_rows(s)
    kind = draw.draw(st.sampled_from(["table", "empty-label", "conflict"]))
    if kind == "empty-label":
        s["rows"][1][1] = draw.draw(st.sampled_from(["", "  "]))
        content, expect = to_csv(s["rows"]), "error"
    elif kind == "conflict":
        r = list(s["rows"][1])
        r[2] = "0" if r[2].startswith("1") else "1"
        s["rows"].append(r)
        content, expect = to_csv(s["rows"]), "error"
    else:
        content, expect = corrupt_table(s, draw.draw, "file_name", "value", ["", "2", "-2", "yes", "0.5"])
    path = tmp_file(tmp_path_factory, "labels.csv")
    write_content(path, content)
    # a column of its own ("note") is read only when named: refused otherwise (it was dropped)
    extra = {"ignore_columns": ["note"]} if s["pad"] else {}
    check(path, expect, long_oracle(s) if expect == "valid" else None, "csv-long", **extra)


# =========================================================================== Open Images
IMAGE_ID = st.text(alphabet=st.sampled_from(list("0123456789abcdef")), min_size=1, max_size=16)
LABEL_NAME = st.builds(lambda s: "/m/" + s, st.text(alphabet=st.sampled_from(list("0123456789abcdefghjk_")),
                                                   min_size=1, max_size=6))


@st.composite
def oi_structs(draw) -> dict:
    ids = draw(st.lists(IMAGE_ID, min_size=1, max_size=4, unique=True))
    names = draw(st.lists(LABEL_NAME, min_size=1, max_size=4, unique=True))
    pairs = draw(st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(names)), min_size=1, max_size=10, unique=True))
    return {"pairs": pairs, "values": [draw(st.sampled_from(["1", "0", "1.0", "0.0"])) for _ in pairs]}


def oi_rows(s: dict) -> list[list[str]]:
    return [["ImageID", "Source", "LabelName", "Confidence"]] + \
        [[i, "verification", c, v] for (i, c), v in zip(s["pairs"], s["values"])]


def oi_oracle(s: dict) -> dict:
    ids = list(dict.fromkeys(i for i, _ in s["pairs"]))
    names = sorted({c for _, c in s["pairs"]})
    labels = np.full((len(ids), len(names)), UNK, np.int8)
    for (i, c), v in zip(s["pairs"], s["values"]):
        labels[ids.index(i), names.index(c)] = POS if float(v) == 1 else NEG
    return {"labels": labels, "file_names": [f"{i}.jpg" for i in ids], "class_names": names,
            "image_ids": list(range(1, len(ids) + 1))}


@SETTINGS
@given(s=oi_structs(), draw=st.data())
def test_fuzz_openimages(tmp_path_factory, s, draw):
    s["rows"] = oi_rows(s)
    kind = draw.draw(st.sampled_from(["table", "empty-id", "empty-label"]))
    if kind == "empty-id":
        s["rows"][1][0] = ""
        content, expect = to_csv(s["rows"]), "error"
    elif kind == "empty-label":
        s["rows"][1][2] = ""
        content, expect = to_csv(s["rows"]), "error"
    else:
        content, expect = corrupt_table(s, draw.draw, "ImageID", "Confidence", ["", "2", "-1", "0.5", "yes"])
    path = tmp_file(tmp_path_factory, "labels.csv")
    write_content(path, content)
    check(path, expect, oi_oracle(s) if expect == "valid" else None, "openimages")


def test_oracles_agree_with_hand_computed_coco():
    """The COCO oracle itself, on a hand-written LVIS case."""
    data = {"images": [{"id": 7, "file_name": "a.jpg", "neg_category_ids": [2]}, {"id": 3, "file_name": "b.jpg"}],
            "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}],
            "annotations": [{"image_id": 3, "category_id": 2}]}
    o = coco_oracle(data)
    np.testing.assert_array_equal(o["labels"], [[UNK, NEG], [UNK, POS]])
    assert o["class_names"] == ["cat", "dog"]


@pytest.mark.parametrize("depth", [100_000])
def test_deeply_nested_json_is_one_line_error(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(LabelfixError, match="deep.json"):
        read_labels(path)
    assert_cli_error(path)
