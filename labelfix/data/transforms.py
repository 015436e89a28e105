"""Image transforms from timm's factory.

Evaluation resizes the whole image to ``img_size x img_size`` (``crop_mode="squash"``)
rather than center-cropping it: a crop can cut away an object whose label the cell
still claims. Training uses a mild random-resized crop (scale 0.7-1.0) for the same
reason, horizontal flips, and RandAugment when asked (LogicMix's recipe, and BalanceMix's
two re-labeling views).
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
TRAIN_SCALE = (0.7, 1.0)


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
    interpolation: str = "bilinear",
):
    """A torchvision transform PIL RGB image -> float tensor (3, img_size, img_size)."""
    if not train:
        return create_transform(
            input_size=img_size,
            is_training=False,
            mean=tuple(mean),
            std=tuple(std),
            interpolation=interpolation,
            crop_pct=1.0,
            crop_mode="squash",
        )
    primary, secondary, final = create_transform(
        input_size=img_size,
        is_training=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        scale=TRAIN_SCALE,
        hflip=0.5,
        color_jitter=None,
        auto_augment=None,
        separate=True,
    )
    middle = [make_randaugment(img_size, mean)] if randaugment else list(secondary.transforms)
    return T.Compose([*primary.transforms, *middle, *final.transforms])
