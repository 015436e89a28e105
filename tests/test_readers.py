"""Round trips and label-state semantics of every reader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelfix.errors import LabelfixError
from labelfix.io import detect_format, read_labels
from labelfix.io.coco_write import labelset_to_coco, rewrite_coco, write_coco
from labelfix.labels import NEG, POS, UNK, LabelSet


def coco_dict():
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 4, "height": 3},
            {"id": 11, "file_name": "sub/b.jpg"},
            {"id": 12, "file_name": "c.jpg"},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 7, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [1, 1, 1, 1]},
            {"id": 3, "image_id": 11, "category_id": 7},
        ],
    }


def test_coco_exhaustive_and_unknown(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps(coco_dict()))
    ls = read_labels(p)
    # classes are ordered by category id
    assert ls.class_names == ["dog", "cat", "bird"]
    assert ls.classes["category_id"].tolist() == [1, 3, 7]
    expected = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], np.int8)
    np.testing.assert_array_equal(ls.labels, expected)
    assert ls.images["width"].tolist() == [4, 0, 0]
    assert ls.image_path(1) == tmp_path / "sub" / "b.jpg"
    unk = read_labels(p, unlabeled="unknown")
    np.testing.assert_array_equal(unk.labels, np.where(expected == 1, POS, UNK))


def test_coco_lvis_semantics(tmp_path):
    d = coco_dict()
    d["images"][0]["neg_category_ids"] = [1]
    d["images"][1]["not_exhaustive_category_ids"] = [7]
    d["images"][2]["neg_category_ids"] = [1, 3, 7]
    p = tmp_path / "lvis.json"
    p.write_text(json.dumps(d))
    ls = read_labels(p)
    assert ls.source["lvis"] and ls.source["unlabeled"] == "unknown"
    np.testing.assert_array_equal(
        ls.labels,
        np.array([[NEG, POS, UNK], [UNK, UNK, POS], [NEG, NEG, NEG]], np.int8),
    )


def test_coco_rewrite_round_trip(tmp_path):
    """Any new matrix written by rewrite_coco reads back exactly, keeping untouched annotations."""
    d = coco_dict()
    p = tmp_path / "l.json"
    p.write_text(json.dumps(d))
    ls = read_labels(p)
    rng = np.random.default_rng(0)
    for trial in range(20):
        new = rng.choice(np.array([POS, NEG, UNK], np.int8), size=ls.labels.shape)
        if trial % 2:
            new[new == UNK] = NEG
        out = tmp_path / f"out{trial}.json"
        write_coco(out, rewrite_coco(d, ls, new))
        back = read_labels(out)
        np.testing.assert_array_equal(back.labels, new)
        data = json.loads(out.read_text())
        kept = [a for a in data["annotations"] if "labelfix" not in a]
        for a in kept:
            assert a in d["annotations"]  # untouched annotations identical
        assert data["categories"] == d["categories"]


def test_csv_wide_round_trip(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("file_name,cat,dog\nx.png,1,\ny.png,0,1\nz.png,,0\n")
    ls = read_labels(p)
    assert detect_format(p) == "csv-wide"
    assert ls.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ls.labels, np.array([[1, -1], [0, 1], [-1, 0]], np.int8))
    short = tmp_path / "short.csv"   # a row with a field missing (before: its cells read as unknown)
    short.write_text("file_name,cat,dog\nx.png,1,\ny.png,0\n")
    with pytest.raises(LabelfixError, match=r"short.csv: data row 2: 2 field\(s\), the header has 3"):
        read_labels(short)
    back = tmp_path / "back.json"
    write_coco(back, labelset_to_coco(ls))
    np.testing.assert_array_equal(read_labels(back).labels, ls.labels)


def test_csv_long_round_trip(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("file_name,label,value\nx.png,dog,1\nx.png,cat,0\ny.png,cat,1\n")
    ls = read_labels(p)
    assert detect_format(p) == "csv-long"
    assert ls.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ls.labels, np.array([[0, 1], [1, -1]], np.int8))
    # a long file without its value column is named as such (before: read as wide CSV,
    # refused for a duplicate file_name)
    p.write_text("file_name,label\nx.png,dog\nx.png,cat\n")
    with pytest.raises(LabelfixError, match="missing column 'value'"):
        read_labels(p)
    with pytest.raises(LabelfixError, match="--format run reads a labelfix run directory"):   # was exit 1
        read_labels(p, format="run")
    # an image's own columns must agree over its rows (the second id was dropped, silently)
    p.write_text("file_name,label,value,image_id,width\nx.png,dog,1,5,48\nx.png,cat,0,6,48\n")
    with pytest.raises(LabelfixError, match=r"l.csv: row 3: image_id '6' for x.png, whose row 2 has '5'"):
        read_labels(p)
    p.write_text("file_name,label,value,image_id,width\nx.png,dog,1,5,48\nx.png,cat,0, 5 ,48.0\ny.png,cat,1,7,\n")
    ls = read_labels(p)
    assert ls.images["image_id"].tolist() == [5, 7] and ls.images["width"].tolist() == [48, 0]
    p.write_text("file_name,label,value,width\nx.png,dog,1,48\nx.png,cat,0,64\n")
    with pytest.raises(LabelfixError, match=r"row 3: width '64' for x.png, whose row 2 has '48'"):
        read_labels(p)
    # a long file's other columns are refused unless named (an annotator column was dropped
    # without a word); a wide file with classes called label and value is not read as long
    p.write_text("file_name,label,value,annotator\nx.png,dog,1,ann\n")
    with pytest.raises(LabelfixError, match="l.csv: columns 'label' and 'value' as in a long CSV, and 'annotator' as in "
                                            "a wide one: pass --format csv-long"):
        read_labels(p)
    with pytest.raises(LabelfixError, match=r"column\(s\) 'annotator' are not columns of a long CSV"):
        read_labels(p, format="csv-long")
    ls = read_labels(p, format="csv-long", ignore_columns=["annotator"])
    assert ls.class_names == ["dog"] and ls.source["ignore_columns"] == ["annotator"]
    p.write_text("file_name,label,value,cat\nx.png,1,0,1\n")
    assert read_labels(p, format="csv-wide").class_names == ["label", "value", "cat"]
    p.write_text("image,label,value,width\nx.png,dog,1,4\n")   # the image column named by --file-column
    assert detect_format(p, "image") == "csv-long" and read_labels(p, file_column="image").class_names == ["dog"]
    # a spreadsheet in a ';' locale: the separator is named (was "missing column 'file_name'" alone)
    p.write_text("file_name;cat\nx.png;1\n")
    with pytest.raises(LabelfixError, match="l.csv: missing column 'file_name': the header is one column separated by "
                                            "';'; save the file as comma-separated CSV"):
        read_labels(p)
    # rows that spell one image two ways are one image (./x.png was a second image)
    p.write_text("file_name,label,value\nx.png,dog,1\n./x.png,cat,0\n")
    ls = read_labels(p)
    assert ls.images["file_name"].tolist() == ["x.png"]
    np.testing.assert_array_equal(ls.labels, np.array([[0, 1]], np.int8))
    wide = tmp_path / "w.csv"   # and in a wide file the second spelling is a duplicate row (was a third image)
    wide.write_text("file_name,cat\na.png,1\nb.png,0\n./a.png,0\n")
    with pytest.raises(LabelfixError, match=r"w.csv: row 4: duplicate file_name './a.png' \(the image of row 2\)"):
        read_labels(wide)


def test_csv_cells_take_minus_one_for_unknown_and_spreadsheet_booleans(tmp_path):
    # -1 is the label matrix's own code for unknown; TRUE / FALSE is what a spreadsheet saves
    wide = tmp_path / "w.csv"
    wide.write_text("file_name,cat,dog\na.png,-1,TRUE\nb.png,false,-1.0\n")
    np.testing.assert_array_equal(read_labels(wide).labels, np.array([[-1, 1], [0, -1]], np.int8))
    long = tmp_path / "l.csv"
    long.write_text("file_name,label,value\na.png,cat,-1\na.png,dog,True\nb.png,cat,0\n")
    np.testing.assert_array_equal(read_labels(long).labels, np.array([[-1, 1], [0, -1]], np.int8))
    wide.write_text("file_name,split,cat\na.png,val,1\n")   # a column that is not a class: named
    with pytest.raises(LabelfixError, match=r"column 'split': value 'val' is not 1, 0 or unknown \(empty or -1\); "
                                            r"every column besides file_name, image_id, width, height is a class"):
        read_labels(wide)


def test_wide_csv_skips_the_columns_named_to_ignore_and_refuses_names_it_lacks(tmp_path):
    # a CheXpert-style file: metadata columns beside the classes (values no label reader takes)
    wide = tmp_path / "w.csv"
    wide.write_text("file_name,Sex,AP/PA,cat,dog\na.png,Male,AP,1,-1\nb.png,Female,PA,,0\n")
    ls = read_labels(wide, ignore_columns=["Sex", "AP/PA"])
    assert ls.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ls.labels, np.array([[1, -1], [-1, 0]], np.int8))
    assert ls.source["ignore_columns"] == ["AP/PA", "Sex"]
    with pytest.raises(LabelfixError, match=r"column 'AP/PA': value 'AP' .*--ignore-column NAME skips one"):
        read_labels(wide, ignore_columns=["Sex"])
    with pytest.raises(LabelfixError, match=r"w.csv: --ignore-column 'sex': the header has no such column "
                                            r"\(columns: file_name, Sex, AP/PA, cat, dog\)"):
        read_labels(wide, ignore_columns=["Sex", "AP/PA", "sex"])
    with pytest.raises(LabelfixError, match=r"--ignore-column 'file_name': the image column cannot be ignored"):
        read_labels(wide, ignore_columns=["file_name", "Sex", "AP/PA"])
    with pytest.raises(LabelfixError, match=r"no class columns"):
        read_labels(wide, ignore_columns=["Sex", "AP/PA", "cat", "dog"])
    with pytest.raises(LabelfixError, match=r"ignore_columns 'Sex': expected a list of column names, got one"):
        read_labels(wide, ignore_columns="Sex")
    # an ignored column is never read, whatever its name: a metadata 'width' of words
    wide.write_text("file_name,width,cat\na.png,n/a,1\nb.png,wide,0\n")
    with pytest.raises(LabelfixError, match=r"width 'n/a' must be empty or a non-negative number"):
        read_labels(wide)
    ls = read_labels(wide, ignore_columns=["width"])
    assert ls.class_names == ["cat"] and ls.images["width"].tolist() == [0, 0]
    long = tmp_path / "l.csv"
    long.write_text("file_name,label,value\na.png,cat,1\n")
    with pytest.raises(LabelfixError, match=r"l.csv: --ignore-column 'label': a column of the long format cannot be "
                                            r"ignored"):
        read_labels(long, ignore_columns=["label"])


def test_csv_image_column_of_another_name_is_read_with_file_column(tmp_path):
    # CheXpert calls its image column Path; the name is the user's to give, never guessed
    wide = tmp_path / "w.csv"
    wide.write_text("Path,Sex,cat,dog\nimgs/a.png,Male,1,-1\nimgs/b.png,Female,,0\n")
    ls = read_labels(wide, file_column="Path", ignore_columns=["Sex"])
    assert ls.images["file_name"].tolist() == ["imgs/a.png", "imgs/b.png"] and ls.class_names == ["cat", "dog"]
    assert ls.source["file_column"] == "Path" and ls.source["ignore_columns"] == ["Sex"]
    with pytest.raises(LabelfixError, match=r"w.csv: missing column 'file_name' \(the image files; --file-column NAME"):
        read_labels(wide, ignore_columns=["Sex"])
    with pytest.raises(LabelfixError, match=r"--ignore-column 'Path': the image column cannot be ignored"):
        read_labels(wide, file_column="Path", ignore_columns=["Sex", "Path"])
    with pytest.raises(LabelfixError, match=r"--file-column 'path': the header has no such column"):
        read_labels(wide, file_column="path", ignore_columns=["Sex"])
    long = tmp_path / "l.csv"
    long.write_text("image,label,value\na.png,cat,1\nb.png,dog,0\n")
    ls = read_labels(long, file_column="image")
    assert ls.images["file_name"].tolist() == ["a.png", "b.png"] and ls.class_names == ["cat", "dog"]
    long.write_text("image,file_name,label,value\na.png,x.png,cat,1\n")
    with pytest.raises(LabelfixError, match=r"--file-column 'image': the file has a 'file_name' column too"):
        read_labels(long, file_column="image")
    # a wide file with both: the other one skipped; a header's trailing space does not hide the name
    wide.write_text("Path ,file_name,cat\nimgs/a.png,old/a.png,1\nimgs/a.png,old/b.png,0\n")
    with pytest.raises(LabelfixError, match=r"row 3: duplicate Path 'imgs/a.png'"):
        read_labels(wide, file_column="Path", ignore_columns=["file_name"])
    wide.write_text("Path ,file_name,cat\nimgs/a.png,old/a.png,1\nimgs/b.png,old/b.png,0\n")
    ls = read_labels(wide, file_column="Path", ignore_columns=["file_name"])
    assert ls.images["file_name"].tolist() == ["imgs/a.png", "imgs/b.png"] and ls.class_names == ["cat"]
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
                                "annotations": []}))
    with pytest.raises(LabelfixError, match=r"c.json: --file-column applies to CSV files only \(format is coco\)"):
        read_labels(coco, file_column="image")


def test_a_coco_labelfix_record_that_is_not_an_object_is_refused(tmp_path):
    # its "unlabeled" was ignored: the cells were read as negatives, silently
    p = tmp_path / "meta.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
                             "annotations": [], "labelfix": [{"unlabeled": "unknown"}]}))
    with pytest.raises(LabelfixError, match=r"meta.json: labelfix: expected an object .*got list"):
        read_labels(p)


def test_openimages(tmp_path):
    labels = tmp_path / "oi.csv"
    labels.write_text(
        "ImageID,Source,LabelName,Confidence\nimg1,verification,/m/01,1\nimg1,verification,/m/02,0\nimg2,crowd,/m/03,1\n"
    )
    desc = tmp_path / "desc.csv"
    desc.write_text("/m/01,Cat\n/m/02,Dog\n/m/03,Bird\n/m/04,Fish\n")
    ls = read_labels(labels, class_descriptions=desc)
    assert detect_format(labels) == "openimages"
    assert ls.class_names == ["Cat", "Dog", "Bird", "Fish"]
    assert ls.images["file_name"].tolist() == ["img1.jpg", "img2.jpg"]
    np.testing.assert_array_equal(ls.labels, np.array([[1, 0, -1, -1], [-1, -1, 1, -1]], np.int8))
    desc.write_text("LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog\n/m/03,Bird\n")
    assert read_labels(labels, class_descriptions=desc).num_classes == 3
    # a byte-order mark (a spreadsheet's "CSV UTF-8") is not part of the header (before: read as wide CSV)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    assert detect_format(bom) == "openimages" and read_labels(bom, class_descriptions=desc).num_images == 2


def test_labelset_save_load(tmp_path):
    ls = LabelSet(
        np.array([[1, -1], [0, 1]], np.int8),
        pd.DataFrame({"image_id": [5, 6], "file_name": ["a b.png", "c,d.png"], "width": [0, 2], "height": [0, 3]}),
        pd.DataFrame({"name": ["x", "y"], "category_id": [2, 9]}),
        tmp_path,
        {"format": "test"},
    )
    ls.save(tmp_path / "run")
    back = read_labels(tmp_path / "run")
    np.testing.assert_array_equal(back.labels, ls.labels)
    assert back.images["file_name"].tolist() == ["a b.png", "c,d.png"]
    assert back.classes["category_id"].tolist() == [2, 9]
    assert back.fingerprint() == ls.fingerprint()
    with pytest.raises(LabelfixError, match=r"^LabelSet: labels: dtype int64, expected int8"):
        LabelSet(np.zeros((2, 2), np.int64), ls.images, ls.classes)
    with pytest.raises(LabelfixError, match=r"^LabelSet: labels: row 1, column 0: 5, expected 1"):
        LabelSet(np.array([[1, 0], [5, -1]], np.int8), ls.images, ls.classes)   # counted as unknown before
    with pytest.raises(LabelfixError, match=r"^LabelSet: labels: expected an int8 numpy array \(2, 2\), got list"):
        LabelSet([[1, 0], [0, 1]], ls.images, ls.classes)
    with pytest.raises(LabelfixError, match=r"^LabelSet: images: .* \(missing image_id\)"):
        LabelSet(np.zeros((2, 2), np.int8), ls.images[["file_name"]], ls.classes)
    empty = ls.subset([])
    assert empty.labels.shape == (0, 2) and len(empty.images) == 0


def test_the_top_level_names_are_listed_and_resolve():
    # lazily imported: dir() lists them (tab completion, help()) and each one imports
    import labelfix

    assert set(labelfix.__all__) <= set(dir(labelfix))
    for name in labelfix.__all__:
        assert getattr(labelfix, name) is not None
