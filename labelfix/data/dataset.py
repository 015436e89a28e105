"""A torch Dataset over a :class:`labelfix.labels.LabelSet`.

Each item is ``(image (3, H, W) float, labels (K,) int8 with 1/0/-1, index)`` where
``index`` is the row in the LabelSet (ROLE's table and the per-cell statistics are
indexed by it). An image that fails to decode yields ``(None, None, index)``;
:func:`collate_skip` drops it from the batch and reports its index, so that training
skips and counts bad files instead of crashing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from labelfix.data.image import DECODE_ERRORS, load_rgb
from labelfix.labels import LabelSet


class PartialLabelDataset(Dataset):
    def __init__(self, labelset: LabelSet, transform, indices: np.ndarray | None = None):
        self.labelset = labelset
        self.transform = transform
        self.indices = np.arange(labelset.num_images) if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        labels = torch.from_numpy(np.array(self.labelset.labels[index], dtype=np.int8))
        try:
            image = load_rgb(self.labelset.image_path(index), self.labelset.image_root)
        except DECODE_ERRORS:
            return None, None, index
        return self.transform(image), labels, index


def collate_skip(batch):
    """Collate ``(image, labels, index)`` items, dropping undecodable ones.

    Returns ``(images (B,3,H,W), labels (B,K) int8, indices (B,) long, failed (F,) long)``;
    ``images`` and ``labels`` are None when every item failed.
    """
    good = [b for b in batch if b[0] is not None]
    failed = torch.tensor([b[2] for b in batch if b[0] is None], dtype=torch.long)
    if not good:
        return None, None, torch.empty(0, dtype=torch.long), failed
    images = torch.stack([b[0] for b in good])
    labels = torch.stack([b[1] for b in good])
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return images, labels, indices, failed
