"""Image transforms from timm's factory.

Training and evaluation both resize the whole image to ``img_size x img_size`` rather
than cropping it: a crop can cut away an object whose label the cell still claims (the
multi-label recipes of ASL and Query2Label resize without cropping too; on the demo data
a random-resized crop of scale 0.7-1.0 cost 10 points of clean-test mAP, see
docs/training.md). Training adds horizontal flips (probability ``hflip``) and RandAugment
when asked (LogicMix's recipe, and BalanceMix's two re-labeling views).
"""

from __future__ import annotations

from typing import Sequence

from timm.data import create_transform
from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS, rand_augment_transform
from torchvision import transforms as T

RANDAUGMENT = "rand-m9-mstd0.5-inc1"
# timm's PosterizeIncreasing keeps 0 bits at the top magnitude, which Pillow >= 12
# rejects; the original-paper variant keeps 4-8 bits.
RAND_OPS = [op if op != "PosterizeIncreasing" else "PosterizeOriginal" for op in _RAND_INCREASING_TRANSFORMS]


def make_randaugment(img_size: int, mean: Sequence[float]):
    """timm's RandAugment (m9, mstd 0.5, increasing ops) without the 0-bit posterize."""
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    return rand_augment_transform(RANDAUGMENT, hparams, transforms=RAND_OPS)


def create_transforms(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    randaugment: bool = False,
    hflip: float = 0.5,
    interpolation: str = "bilinear",
):
    """A torchvision transform PIL RGB image -> float tensor (3, img_size, img_size).

    Both modes are timm's evaluation transform (resize the whole image to a square, no
    crop); training inserts a horizontal flip with probability ``hflip`` (0 where
    mirroring changes the class) and RandAugment when asked, before the tensor
    conversion."""
    squash = create_transform(
        input_size=img_size,
        is_training=False,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        crop_pct=1.0,
        crop_mode="squash",
    )
    if not train:
        return squash
    steps = list(squash.transforms)
    # PIL-image augmentations go between the resize and the tensor conversion
    cut = next(i for i, t in enumerate(steps) if type(t).__name__ in ("MaybeToTensor", "ToTensor"))
    middle = [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    if randaugment:
        middle.append(make_randaugment(img_size, mean))
    return T.Compose([*steps[:cut], *middle, *steps[cut:]])
