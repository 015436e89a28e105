"""The bundled demo dataset: multi-label digit mosaics, generated on demand.

Built from scikit-learn's bundled 8x8 digits (no download). Each image is a
``size x size`` grayscale-on-colour mosaic with 1-4 digits placed without overlap;
every digit is a COCO annotation with a real bounding box. Digit classes follow a
long-tailed distribution (class k drawn with probability proportional to
``decay ** rank``), so class frequencies are imbalanced the way real data is. The
train and test splits are drawn from disjoint sets of the source digit images, and
the test split's labels are complete and clean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from labelfix.io import atomic

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _place(rng: np.random.Generator, size: int, cell: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` non-overlapping ``cell``-sized squares on a grid."""
    slots = size // cell
    flat = rng.choice(slots * slots, size=count, replace=False)
    jitter = size - slots * cell
    out = []
    for s in flat:
        r, c = divmod(int(s), slots)
        dy, dx = rng.integers(0, jitter + 1, size=2) if jitter else (0, 0)
        out.append((r * cell + int(dy) // slots, c * cell + int(dx) // slots))
    return out


def _render_split(
    rng: np.random.Generator,
    digits: np.ndarray,
    targets: np.ndarray,
    class_p: np.ndarray,
    n_images: int,
    size: int,
    folder: Path,
    prefix: str,
) -> dict:
    cell = size // 3
    by_class = [np.flatnonzero(targets == k) for k in range(10)]
    images, annotations = [], []
    ann_id = 1
    for i in range(n_images):
        count = int(rng.integers(1, 5))
        classes = rng.choice(10, size=count, p=class_p)
        canvas = np.zeros((size, size, 3), np.float32)
        canvas[:] = rng.uniform(0, 60, size=3)  # a random dark background colour
        for k, (y, x) in zip(classes, _place(rng, size, cell, count)):
            src = digits[rng.choice(by_class[int(k)])]
            scale = int(rng.integers(cell * 2 // 3, cell + 1))
            glyph = Image.fromarray((src * (255.0 / 16.0)).astype(np.uint8)).resize((scale, scale), Image.BILINEAR)
            g = np.asarray(glyph, np.float32)[..., None] / 255.0
            colour = rng.uniform(150, 255, size=3)
            patch = canvas[y : y + scale, x : x + scale]
            canvas[y : y + scale, x : x + scale] = patch * (1 - g) + colour * g
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": int(k) + 1,
                    "bbox": [float(x), float(y), float(scale), float(scale)],
                    "area": float(scale * scale),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        canvas += rng.normal(0, 6, size=canvas.shape)
        name = f"{prefix}_{i:05d}.png"
        with atomic.atomic_path(folder / name) as tmp:
            Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
        images.append({"id": i + 1, "file_name": f"images/{name}", "width": size, "height": size})
    return {
        "info": {"description": f"labelfix demo digit mosaics ({prefix})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": DIGIT_NAMES[k], "supercategory": "digit"} for k in range(10)],
    }


def make_demo(
    out_dir: str | Path,
    *,
    n_train: int = 1200,
    n_test: int = 400,
    size: int = 48,
    decay: float = 0.75,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate the demo dataset into ``out_dir``.

    Writes ``out_dir/images/*.png``, ``out_dir/train.json`` and ``out_dir/test.json``
    (COCO, exhaustive labels) as one :func:`labelfix.io.atomic.output_set`: interrupted, it
    leaves none of them. Returns ``{"train": ..., "test": ..., "images": ...}``.
    Deterministic for a given seed.
    """
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    rng = np.random.default_rng(seed)
    # disjoint source digits for train and test
    perm = rng.permutation(len(data.target))
    cut = int(len(perm) * 0.7)
    class_p = decay ** rng.permutation(10).astype(np.float64)
    class_p /= class_p.sum()
    paths = {}
    # one output set: the images and both COCO files appear together when all are written
    # (an interrupted run leaves none of them), and the folder is fsync'ed once, not per image
    with atomic.output_set():
        for split, idx, n in (("train", perm[:cut], n_train), ("test", perm[cut:], n_test)):
            coco = _render_split(rng, data.images[idx], data.target[idx], class_p, n, size, folder, split)
            paths[split] = out / f"{split}.json"
            atomic.write_json(paths[split], coco, indent=None)
    paths["images"] = folder
    return paths
