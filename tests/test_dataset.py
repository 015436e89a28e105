"""The torch Dataset: decoding rules (EXIF, modes), labels with unknowns, the index,
and skipping of undecodable images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from labelfix.data.dataset import PartialLabelDataset, collate_skip
from labelfix.data.image import load_rgb
from labelfix.data.transforms import create_transforms
from labelfix.labels import LabelSet


def test_exif_orientation(tmp_path):
    im = Image.new("RGB", (20, 10), "white")
    im.paste((255, 0, 0), (0, 0, 5, 10))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(tmp_path / "r.jpg")
    assert out.size == (10, 20)
    arr = np.asarray(out)
    assert arr[0, 5, 0] > 200 and arr[0, 5, 1] < 60  # the red strip is now on top


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (6, 4), 128),
        lambda: Image.new("P", (6, 4), 3),
        lambda: Image.new("RGBA", (6, 4), (10, 20, 30, 128)),
        lambda: Image.new("LA", (6, 4), (100, 255)),
        lambda: Image.fromarray(np.full((4, 6), 65535, np.uint16)),
        lambda: Image.fromarray(np.full((4, 6), 1.0, np.float32)),         # float in [0, 1] (was nearly black)
        lambda: Image.fromarray(np.full((4, 6), 2**20, np.int32)),         # 32-bit above 16 bits (was clipped)
    ],
    ids=["gray", "palette", "rgba", "la", "16bit", "float", "32bit"],
)
def test_modes_become_rgb(tmp_path, make):
    im = make()
    name = "x.tif" if im.mode in ("F", "I") else "x.png"   # PNG holds neither
    im.save(tmp_path / name)
    out = load_rgb(tmp_path / name)
    assert out.mode == "RGB" and out.size == (6, 4)
    if im.mode.startswith("I") or im.mode == "F":
        assert np.asarray(out).max() == 255  # full scale -> 8-bit full scale
    if im.mode == "F":   # an inf pixel is clipped, not the scale; a resampling overshoot above 1 is still [0, 1]
        Image.fromarray(np.array([[0.0, np.inf, 1.0]], np.float32)).save(tmp_path / "f.tif")
        assert np.asarray(load_rgb(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 255, 255]
        Image.fromarray(np.array([[0.0, 0.5, 1.0005]], np.float32)).save(tmp_path / "g.tif")
        assert np.asarray(load_rgb(tmp_path / "g.tif"))[0, :, 0].tolist() == [0, 128, 255]
    if im.mode == "I":   # beyond 16 bits: scaled by its own largest value, not clipped
        Image.fromarray(np.array([[2**20, 2**21]], np.int32)).save(tmp_path / "y.tif")
        assert np.asarray(load_rgb(tmp_path / "y.tif"))[0, :, 0].tolist() == [128, 255]


def test_dataset_items_and_skip(tmp_path):
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ls = LabelSet(
        np.array([[1, -1, 0], [0, 1, -1], [1, 1, 1]], np.int8),
        pd.DataFrame({"image_id": [1, 2, 3], "file_name": ["a.png", "bad.png", "gone.png"], "width": 0, "height": 0}),
        pd.DataFrame({"name": ["x", "y", "z"], "category_id": [1, 2, 3]}),
        tmp_path,
    )
    tf = create_transforms(8, (0.5,) * 3, (0.5,) * 3, train=False)
    ds = PartialLabelDataset(ls, tf, indices=[2, 0, 1])
    img, lab, idx = ds[1]
    assert img.shape == (3, 8, 8) and idx == 0
    assert lab.dtype == torch.int8 and lab.tolist() == [1, -1, 0]
    images, labels, indices, failed = collate_skip([ds[i] for i in range(3)])
    assert images.shape == (1, 3, 8, 8)
    assert indices.tolist() == [0] and sorted(failed.tolist()) == [1, 2]
    assert labels.tolist() == [[1, -1, 0]]


def test_eval_transform_squashes_not_crops():
    im = Image.new("RGB", (40, 10), "black")
    im.paste((255, 255, 255), (35, 0, 40, 10))  # white strip at the right edge
    tf = create_transforms(8, (0, 0, 0), (1, 1, 1), train=False)
    x = tf(im)
    assert x.shape == (3, 8, 8)
    assert x[:, :, -1].mean() > 0.5  # a center crop would have cut the strip away


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_train_transform_keeps_the_whole_image(hflip):
    """Training never crops (an edge object whose label the cell claims stays in view);
    hflip 0 leaves the image as evaluation sees it, hflip 1 mirrors it."""
    im = Image.new("RGB", (40, 10), "black")
    im.paste((255, 255, 255), (35, 0, 40, 10))  # white strip at the right edge
    ev = create_transforms(8, (0, 0, 0), (1, 1, 1), train=False)(im)
    tf = create_transforms(8, (0, 0, 0), (1, 1, 1), train=True, hflip=hflip)
    for _ in range(20):
        x = tf(im)
        assert torch.allclose(x, ev if hflip == 0.0 else ev.flip(-1))


def test_train_transform_randaugment_shapes():
    tf = create_transforms(16, (0.5,) * 3, (0.5,) * 3, train=True, randaugment=True)
    x = tf(Image.new("RGB", (30, 20), "green"))
    assert x.shape == (3, 16, 16)


def test_randaugment_survives_every_magnitude():
    """timm's 0-bit posterize at the top magnitude crashes on current Pillow; ours must not."""
    torch.manual_seed(0)
    import random

    random.seed(0)
    tf = create_transforms(16, (0.5,) * 3, (0.5,) * 3, train=True, randaugment=True)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    for _ in range(400):
        assert tf(im).shape == (3, 16, 16)


def test_large_images_decode_without_pils_warning_and_huge_ones_are_bad_images(tmp_path):
    """Between PIL's limit and twice it an image decodes without PIL's raw two-line
    warning on stderr; above twice it, it is a decode error (reported or counted as a
    bad image). The limit is lowered in the child process to keep the images small."""
    import subprocess
    import sys

    Image.new("L", (40, 40), 7).save(tmp_path / "big.png")      # 1,600 pixels: over 1,000
    Image.new("L", (50, 50), 7).save(tmp_path / "huge.png")     # 2,500 pixels: over 2,000
    code = (
        "import warnings; warnings.simplefilter('default')\n"
        "from PIL import Image; Image.MAX_IMAGE_PIXELS = 1000\n"
        "from labelfix.data.image import DECODE_ERRORS, load_rgb\n"
        f"print(load_rgb({str(tmp_path / 'big.png')!r}).size)\n"
        f"try:\n    load_rgb({str(tmp_path / 'huge.png')!r})\n"
        "except DECODE_ERRORS as e:\n    print(type(e).__name__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(40,", "40)", "DecompressionBombError"]
    assert r.stderr == ""


def test_file_names_in_the_other_unicode_normal_form_are_found(tmp_path):
    """A label file typed in NFC names files that macOS wrote in NFD (and the other way
    round): Linux tells the two apart, so the name is looked up in both forms, below the
    image root only (the root's own spelling is the user's)."""
    import unicodedata

    from labelfix.data.image import image_problem, on_disk_name
    from labelfix.info import dataset_info

    nfc, nfd = (lambda s: unicodedata.normalize("NFC", s)), (lambda s: unicodedata.normalize("NFD", s))
    root = tmp_path / nfc("données")
    (root / nfd("été")).mkdir(parents=True)
    Image.new("RGB", (6, 4), "red").save(root / nfd("été") / nfd("crème.png"))
    Image.new("RGB", (6, 4), "blue").save(root / nfc("brûlé.png"))
    names = [nfc("été/crème.png"), nfd("brûlé.png"), nfc("été/absent.png")]
    ls = LabelSet(
        np.array([[1], [0], [1]], np.int8),
        pd.DataFrame({"image_id": [1, 2, 3], "file_name": names, "width": 0, "height": 0}),
        pd.DataFrame({"name": ["x"], "category_id": [1]}),
        root,
    )
    assert np.asarray(load_rgb(ls.image_path(0), ls.image_root))[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(load_rgb(ls.image_path(1), ls.image_root))[0, 0].tolist() == [0, 0, 255]
    assert on_disk_name(ls.image_path(0), ls.image_root) == str(root / nfd("été") / nfd("crème.png"))
    assert image_problem(ls.image_path(2), ls.image_root) == "missing"
    with pytest.raises(FileNotFoundError):
        load_rgb(ls.image_path(2), ls.image_root)
    assert dataset_info(ls).missing_files == [names[2]]
