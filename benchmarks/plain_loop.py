"""The plain PyTorch reference of the throughput benchmarks (``train_overhead.py`` on the
CPU, ``gpu_check.py`` on a GPU): the same model (labelfix's ``create_model``), image
decoder and training transform as ``labelfix train``, in a plain ``Dataset`` +
``DataLoader`` (shuffled, dropping the last partial batch) with AdamW (lr 1e-3, weight
decay 1e-4). Each benchmark runs its own loop over it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset


def plain_setup(data: Path, backbone: str, size: int, batch_size: int, workers: int, *,
                device: str = "cpu", channels_last: bool = False, pin_memory: bool = False):
    """Returns ``(model, loader, optimizer)`` for a plain training loop on ``data``."""
    from labelfix.data.image import load_rgb
    from labelfix.data.transforms import create_transforms
    from labelfix.io import read_labels
    from labelfix.models import create_model, model_config

    ls = read_labels(data)
    model = create_model(backbone, "linear", num_classes=ls.num_classes, img_size=size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = model_config(model)
    tf = create_transforms(size, cfg["mean"], cfg["std"], train=True, hflip=0.0)
    labels = torch.as_tensor((ls.labels == 1).astype("float32"))

    class Images(Dataset):
        def __len__(self):
            return ls.num_images

        def __getitem__(self, i):
            return tf(load_rgb(ls.image_path(i))), labels[i]

    loader = DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=pin_memory)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    return model, loader, opt
