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

RANDAUGMENT = "rand-m9-mstd0.5-inc1"
TRAIN_SCALE = (0.7, 1.0)


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
    return create_transform(
        input_size=img_size,
        is_training=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        scale=TRAIN_SCALE,
        hflip=0.5,
        color_jitter=None,
        auto_augment=RANDAUGMENT if randaugment else None,
    )
