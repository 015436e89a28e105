"""Training-side data plumbing: keyed dataset, collate, split and loaders.

Samplers (``sampler.py``) yield ``SampleKey(index, seed, slot)``. ``KeyedDataset`` runs
the image's transform with Python, NumPy and torch RNGs seeded from ``key.seed`` and
restores them afterwards, so the augmentation of an image depends only on (run seed,
epoch, position) -- not on the number of workers, the rank, or an interruption.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from labelfix.data.dataset import PartialLabelDataset
from labelfix.labels import LabelSet
from labelfix.train.sampler import SampleKey


class KeyedDataset(Dataset):
    """``dataset[SampleKey]`` -> ``(image or None, labels (K,) int8 or None, index, slot)``."""

    def __init__(self, labelset: LabelSet, transform):
        self.base = PartialLabelDataset(labelset, transform)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: SampleKey):
        py_state = random.getstate()
        np_state = np.random.get_state()
        torch_state = torch.random.get_rng_state()
        try:
            random.seed(key.seed)
            np.random.seed(key.seed % (2**32))
            torch.manual_seed(key.seed)
            image, labels, index = self.base[key.index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)
        return image, labels, int(index), int(key.slot)


class MultiViewDataset(KeyedDataset):
    """Like ``KeyedDataset`` but the image is decoded once and transformed ``views``
    times (view v seeded from ``(key.seed, v)``): item image is (views, 3, H, W).
    BalanceMix's two-view re-labeling uses it so each image is read once, not twice."""

    def __init__(self, labelset: LabelSet, transform, views: int = 2):
        super().__init__(labelset, transform)
        self.views = int(views)

    def __getitem__(self, key: SampleKey):
        from labelfix.data.image import DECODE_ERRORS, load_rgb
        from labelfix.train.sampler import derive_seed

        labelset = self.base.labelset
        labels = torch.from_numpy(np.array(labelset.labels[key.index], dtype=np.int8))
        try:
            image = load_rgb(labelset.image_path(key.index))
        except DECODE_ERRORS:
            return None, None, int(key.index), int(key.slot)
        py_state = random.getstate()
        np_state = np.random.get_state()
        torch_state = torch.random.get_rng_state()
        out = []
        try:
            for v in range(self.views):
                seed = derive_seed(key.seed, v)
                random.seed(seed)
                np.random.seed(seed % (2**32))
                torch.manual_seed(seed)
                out.append(self.base.transform(image))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)
        return torch.stack(out), labels, int(key.index), int(key.slot)


def collate_keyed(batch):
    """Collate ``KeyedDataset`` items, dropping those that failed to decode.

    Returns ``(images (B,3,H,W) | None, labels (B,K) int8 | None, indices (B,) long,
    slots (B,) long, failed (F,) long, positions (B,) long)``; ``positions`` is each kept
    item's position in the original list (padding detection in evaluation passes).
    """
    keep = [i for i, b in enumerate(batch) if b[0] is not None]
    failed = torch.tensor([b[2] for b in batch if b[0] is None], dtype=torch.long)
    positions = torch.tensor(keep, dtype=torch.long)
    if not keep:
        empty = torch.empty(0, dtype=torch.long)
        return None, None, empty, empty, failed, positions
    images = torch.stack([batch[i][0] for i in keep])
    labels = torch.stack([batch[i][1] for i in keep])
    indices = torch.tensor([batch[i][2] for i in keep], dtype=torch.long)
    slots = torch.tensor([batch[i][3] for i in keep], dtype=torch.long)
    return images, labels, indices, slots, failed, positions


def make_loader(dataset: Dataset, batch_sampler, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over keyed batches. It gets its own generator, so creating its
    iterator never draws from the global torch RNG (which a checkpoint restores)."""
    gen = torch.Generator()
    gen.manual_seed(0)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=collate_keyed, pin_memory=pin_memory, generator=gen,
                      persistent_workers=False)


def split_indices(num_images: int, val_split: float, seed: int) -> np.ndarray:
    """int8 (N,): 0 = train, 1 = validation; ``round(N * val_split)`` images drawn
    uniformly with a generator seeded by ``seed`` (at least one train image kept)."""
    split = np.zeros(num_images, dtype=np.int8)
    n_val = int(round(num_images * val_split))
    n_val = min(n_val, num_images - 1)
    if n_val > 0:
        g = torch.Generator().manual_seed(int(seed) + 7919)
        split[torch.randperm(num_images, generator=g)[:n_val].numpy()] = 1
    return split
