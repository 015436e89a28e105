"""The second benchmark dataset: colour objects on natural textures ("emoji scenes").

Each image is a ``size x size`` crop of a texture or photo bundled in scikit-image (grass,
gravel, brick, the Hubble deep field, a stained tissue slide; no object in them), tinted
at random, with 1-3 objects pasted at random places, sizes and rotations. The objects are
the colour glyphs of Google's Noto Color Emoji font (Debian ``fonts-noto-color-emoji``,
Apache-2.0), grouped into 14 classes by their Unicode emoji subgroup (mammal, bird,
fruit, vehicle, ...). Every class's glyphs are split in two halves, one for the train
split and one for the test split, so a test image never shows a glyph seen in training.
Labels are complete and clean, COCO with real boxes, like the digit mosaics
(``labelfix.data.demo``); unlike them, an ImageNet-pretrained backbone knows what these
objects look like.

Used for evaluation only (docs/benchmarks.md): no default was chosen on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from labelfix.errors import LabelfixError
from labelfix.io import atomic

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_PACKAGE = "fonts-noto-color-emoji"
#: the font is a bitmap (CBDT) font: 109 px is its only size
FONT_SIZE = 109

#: class -> single-code-point emoji of that Unicode subgroup (Emoji 15.0)
CLASSES = {
    "mammal": "1f435 1f412 1f98d 1f9a7 1f436 1f415 1f9ae 1f429 1f43a 1f98a 1f99d 1f431 1f408 1f981 1f42f 1f405",
    "bird": "1f983 1f414 1f413 1f423 1f424 1f425 1f426 1f427 1f54a 1f985 1f986 1f9a2 1f989 1f9a4 1fab6 1f9a9",
    "sea animal": "1f433 1f40b 1f42c 1f9ad 1f41f 1f420 1f421 1f988 1f419 1fabc",
    "bug": "1f40c 1f98b 1f41b 1f41c 1f41d 1fab2 1f41e 1f997 1fab3 1f577 1f982 1f99f 1fab0 1fab1 1f9a0",
    "flower": "1f490 1f338 1f4ae 1fab7 1f339 1f33a 1f33b 1f33c 1f337 1fabb",
    "fruit": "1f347 1f348 1f349 1f34a 1f34b 1f34c 1f34d 1f96d 1f34e 1f34f 1f350 1f351 1f352 1f353 1fad0 1f95d",
    "vegetable": "1f951 1f346 1f954 1f955 1f33d 1f336 1fad1 1f952 1f96c 1f966 1f9c4 1f9c5 1f95c 1fad8 1f330 1fada",
    "sweet": "1f366 1f367 1f368 1f369 1f36a 1f382 1f370 1f9c1 1f967 1f36b 1f36c 1f36d 1f36e 1f36f",
    "drink": "1f95b 2615 1fad6 1f375 1f376 1f37e 1f377 1f378 1f379 1f37a 1f37b 1f942 1fad7 1f964 1f9cb 1f9c3",
    "vehicle": "1f682 1f683 1f684 1f685 1f686 1f687 1f688 1f68a 1f69d 1f69e 1f68b 1f68c 1f68d 1f68e 1f690 1f691",
    "aircraft": "2708 1f6e9 1fa82 1f681 1f69f 1f6a0 1f6a1 1f6f0 1f680 1f6f8",
    "ball": "26bd 26be 1f94e 1f3c0 1f3d0 1f3c8 1f3c9",
    "instrument": "1f3b7 1fa97 1f3b8 1f3b9 1f3ba 1f3bb 1fa95 1f941 1fa98 1fa87 1fa88",
    "clothing": "1f453 1f576 1f97d 1f97c 1f9ba 1f454 1f455 1f456 1f9e3 1f9e4 1f9e5 1f9e6 1f457 1f458 1f97b 1fa71",
}


def _font():
    from PIL import ImageFont

    if not FONT.is_file():
        raise LabelfixError(f"{FONT}: missing; the emoji-scenes dataset needs Debian's {FONT_PACKAGE} "
                            f"(apt-get install {FONT_PACKAGE}; `make env` installs it)")
    return ImageFont.truetype(str(FONT), FONT_SIZE)


def render_glyphs(codepoints: list[str]) -> list[Image.Image]:
    """Tightly cropped RGBA images (about 120 px) of the given emoji code points."""
    from PIL import ImageDraw

    font = _font()
    out = []
    for cp in codepoints:
        im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((10, 10), chr(int(cp, 16)), font=font, embedded_color=True)
        box = im.getbbox()
        if box is None:
            raise LabelfixError(f"{FONT}: glyph U+{cp.upper()} renders empty (another font version?)")
        out.append(im.crop(box))
    return out


def _backgrounds() -> list[np.ndarray]:
    import skimage.data as skd

    out = []
    for name in ("grass", "gravel", "brick", "hubble_deep_field", "immunohistochemistry"):
        img = np.asarray(getattr(skd, name)())
        out.append(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])
    return out


def _render_split(rng, sprites, backgrounds, class_p, n, size, folder: Path, prefix: str, start_id: int) -> dict:
    names = list(sprites)
    images, annotations = [], []
    ann_id = 1
    for i in range(n):
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        s = int(rng.integers(size, min(bg.shape[0], bg.shape[1], 4 * size) + 1))
        y, x = int(rng.integers(0, bg.shape[0] - s + 1)), int(rng.integers(0, bg.shape[1] - s + 1))
        crop = Image.fromarray(bg[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)
        tint = rng.uniform(0.5, 1.2, size=3)
        canvas = Image.fromarray(np.clip(np.asarray(crop, np.float32) * tint, 0, 255).astype(np.uint8))
        count = int(rng.integers(1, 4))
        for k in rng.choice(len(names), size=count, replace=False, p=class_p):
            glyphs = sprites[names[int(k)]]
            sprite = glyphs[int(rng.integers(len(glyphs)))].copy()
            side = int(rng.integers(size * 3 // 10, size * 48 // 100 + 1))
            sprite.thumbnail((side, side), Image.LANCZOS)
            sprite = sprite.rotate(float(rng.uniform(-20, 20)), expand=True, resample=Image.BICUBIC)
            px, py = int(rng.integers(0, size - sprite.width + 1)), int(rng.integers(0, size - sprite.height + 1))
            canvas.paste(sprite, (px, py), sprite)
            annotations.append({"id": ann_id, "image_id": start_id + i, "category_id": int(k) + 1,
                                "bbox": [px, py, sprite.width, sprite.height],
                                "area": float(sprite.width * sprite.height), "iscrowd": 0})
            ann_id += 1
        file_name = f"{prefix}_{i:05d}.png"
        canvas.save(folder / file_name)
        images.append({"id": start_id + i, "file_name": f"{folder.name}/{file_name}", "width": size, "height": size})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": j + 1, "name": name} for j, name in enumerate(names)]}


def make_scenes(out_dir: str | Path, *, n_train: int = 1200, n_test: int = 400, size: int = 96,
                decay: float = 0.85, seed: int = 0) -> dict[str, Path]:
    """Generate the emoji-scenes dataset into ``out_dir``: ``images/*.png``,
    ``train.json`` and ``test.json`` (COCO, exhaustive, clean). Classes are drawn with
    probability proportional to ``decay ** rank`` (a long tail, as in the digit mosaics).
    Deterministic per seed. Returns ``{"train": ..., "test": ..., "images": ...}``."""
    out = Path(out_dir)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    halves = {"train": {}, "test": {}}
    for name, cps in CLASSES.items():
        glyphs = render_glyphs(cps.split())
        order = rng.permutation(len(glyphs))
        cut = (len(glyphs) + 1) // 2
        halves["train"][name] = [glyphs[j] for j in order[:cut]]
        halves["test"][name] = [glyphs[j] for j in order[cut:]]
    backgrounds = _backgrounds()
    class_p = decay ** rng.permutation(len(CLASSES)).astype(np.float64)
    class_p /= class_p.sum()
    paths = {}
    for split, n, start in (("train", n_train, 1), ("test", n_test, 1 + n_train)):
        coco = _render_split(rng, halves[split], backgrounds, class_p, n, size, folder, split, start)
        coco["info"] = {"description": f"labelfix emoji scenes ({split}), seed {seed}",
                        "contributor": "Noto Color Emoji (Apache-2.0) on scikit-image textures"}
        paths[split] = out / f"{split}.json"
        atomic.write_json(paths[split], coco)
    paths["images"] = folder
    return paths
