"""Training-side data plumbing: keyed dataset, collate, split and loaders.

Samplers (``sampler.py``) yield ``SampleKey(index, seed, slot)``. ``KeyedDataset`` runs
the image's transform with Python, NumPy and torch RNGs seeded from ``key.seed`` and
restores them afterwards, so the augmentation of an image depends only on (run seed,
epoch, position) -- not on the number of workers, the rank, or an interruption.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from labelfix.data.dataset import PartialLabelDataset
from labelfix.errors import LabelfixError
from labelfix.labels import LabelSet
from labelfix.io.arrays import load_npy
from labelfix.train.sampler import SampleKey


#: memory for transformed images of a deterministic transform (per process)
CACHE_BYTES = 1 << 30


@contextlib.contextmanager
def seeded(seed: int):
    """Seed Python's, NumPy's and torch's global RNGs for one transform call, then
    restore them (augmentation must not depend on workers, ranks or interruptions)."""
    # only the CPU generator: torch.manual_seed would also queue a lazy CUDA seeding call,
    # which records a stack trace every time (about 1 ms an image on this machine)
    cpu = torch.random.default_generator
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), cpu.get_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        cpu.set_state(torch_state)


class KeyedDataset(Dataset):
    """``dataset[SampleKey]`` -> ``(image or None, labels (K,) int8 or None, index, slot,
    views or None)``.

    ``views`` (settable between epochs): extra augmented views of the same decoded image,
    float (V, 3, H, W), view v seeded from ``(key.seed, v)`` (BalanceMix's re-labeling).
    ``stack_views=True`` returns the views *as* the image (V, 3, H, W) instead (the
    two-view scoring pass). ``random=False`` (a deterministic transform, e.g. evaluation)
    skips the seeding and keeps the transformed images in ``cache`` (a dict, shareable
    between datasets with the same transform) up to :data:`CACHE_BYTES`: small data is
    decoded once per process instead of once per epoch."""

    def __init__(self, labelset: LabelSet, transform, views: int = 0, stack_views: bool = False,
                 random: bool = True, cache: dict | None = None):
        self.base = PartialLabelDataset(labelset, transform)
        self.views = int(views)
        self.stack_views = bool(stack_views)
        self.random = bool(random)
        self.cache = None if random else ({} if cache is None else cache)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: SampleKey):
        from labelfix.data.image import DECODE_ERRORS, load_rgb
        from labelfix.train.sampler import derive_seed

        labelset = self.base.labelset
        labels = torch.from_numpy(np.array(labelset.labels[key.index], dtype=np.int8))
        if self.cache is not None and key.index in self.cache and not self.views:
            return self.cache[key.index], labels, int(key.index), int(key.slot), None
        try:
            image = load_rgb(labelset.image_path(key.index), labelset.image_root)
        except DECODE_ERRORS:
            return None, None, int(key.index), int(key.slot), None
        transform = self.base.transform
        views = []
        for v in range(self.views):
            with seeded(derive_seed(key.seed, v)) if self.random else contextlib.nullcontext():
                views.append(transform(image))
        views = torch.stack(views) if views else None
        if self.stack_views:
            return views, labels, int(key.index), int(key.slot), None
        with seeded(key.seed) if self.random else contextlib.nullcontext():
            main = transform(image)
        if self.cache is not None and (len(self.cache) + 1) * main.numel() * main.element_size() <= CACHE_BYTES:
            self.cache[key.index] = main
        return main, labels, int(key.index), int(key.slot), views


def collate_keyed(batch):
    """Collate ``KeyedDataset`` items, dropping those that failed to decode.

    Returns ``(images (B,3,H,W) | None, labels (B,K) int8 | None, indices (B,) long,
    slots (B,) long, failed (F,) long, positions (B,) long, views (B,V,3,H,W) | None)``;
    ``positions`` is each kept item's position in the original list (padding detection
    in evaluation passes).
    """
    keep = [i for i, b in enumerate(batch) if b[0] is not None]
    failed = torch.tensor([b[2] for b in batch if b[0] is None], dtype=torch.long)
    positions = torch.tensor(keep, dtype=torch.long)
    if not keep:
        empty = torch.empty(0, dtype=torch.long)
        return None, None, empty, empty, failed, positions, None
    images = torch.stack([batch[i][0] for i in keep])
    labels = torch.stack([batch[i][1] for i in keep])
    indices = torch.tensor([batch[i][2] for i in keep], dtype=torch.long)
    slots = torch.tensor([batch[i][3] for i in keep], dtype=torch.long)
    views = torch.stack([batch[i][4] for i in keep]) if batch[keep[0]][4] is not None else None
    return images, labels, indices, slots, failed, positions, views


def make_loader(dataset: Dataset, batch_sampler, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over keyed batches. It gets its own generator, so creating its
    iterator never draws from the global torch RNG (which a checkpoint restores)."""
    gen = torch.Generator()
    gen.manual_seed(0)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=collate_keyed, pin_memory=pin_memory, generator=gen,
                      persistent_workers=False)


#: split value of the rows a cross-fitted fold model holds out (0 train, 1 validation)
HELD_OUT = 2


def split_indices(num_images: int, val_split: float, seed: int) -> np.ndarray:
    """int8 (N,): 0 = train, 1 = validation; ``round(N * val_split)`` images drawn
    uniformly with a generator seeded by ``seed`` (at least one train image kept). A
    ``val_split`` > 0 that rounds to no image is refused."""
    split = np.zeros(num_images, dtype=np.int8)
    n_val = int(round(num_images * val_split))
    if val_split > 0 and n_val == 0:   # accepted and ignored otherwise
        raise LabelfixError(f"--val-split (val_split) {val_split:g}: {num_images} images x {val_split:g} rounds "
                            f"to no validation image; use at least {1 / num_images:.2g}, or 0 for none")
    n_val = min(n_val, num_images - 1)
    if n_val > 0:
        g = torch.Generator().manual_seed(int(seed) + 7919)
        split[torch.randperm(num_images, generator=g)[:n_val].numpy()] = 1
    return split


def read_run_labels(cfg, path) -> LabelSet:
    """The labels at ``path`` (``--data`` or ``--val``) read with the run's reading options
    (``--format``, ``--images``, ``--unlabeled``, ``--class-descriptions``, ``--ignore-column``,
    ``--file-column``)."""
    from labelfix.io import read_labels

    return read_labels(path, format=cfg.format, images=cfg.images, unlabeled=cfg.unlabeled,
                       class_descriptions=cfg.class_descriptions, ignore_columns=cfg.ignore_columns,
                       file_column=cfg.file_column)


def labels_if_newer(cfg, path: Path, out: Path) -> LabelSet | None:
    """The labels at ``path`` read again with the run's reading options
    (:func:`read_run_labels`) when the file was modified after the run in ``out`` saved its
    labels (its mtime is later than ``labels.npy``'s); None when it was not, or when there
    is nothing to compare (no saved labels yet, no file). Raises LabelfixError when the file
    can no longer be read as the run read it. ``--resume`` and ``export coco`` (a source
    that is not COCO) ask it whether the labels changed since training."""
    saved = Path(out) / "labels.npy"
    if not saved.exists() or not path.is_file() or path.stat().st_mtime <= saved.stat().st_mtime:
        return None
    return read_run_labels(cfg, path)


def check_resume_data(cfg, log=None) -> None:
    """Refuse ``--resume`` when the labels at ``cfg.data`` are no longer those the run in
    ``cfg.out`` started with (the file was edited or replaced since): a resumed run trains
    on the labels it saved (``RUN/labels.npy``), so it would otherwise ignore the change.

    The file is read again only when it was modified after the run saved its labels
    (:func:`labels_if_newer`), and its labels' fingerprint is compared with the one
    ``config.yaml`` recorded. A file that can no longer be read as the run read it (e.g.
    an Open Images class-description file moved away) is logged and the run resumes on
    its saved labels, as ``export coco`` reads them."""
    out = Path(cfg.out)
    data = Path(cfg.data) if cfg.data else None
    if data is None:
        return
    try:
        now = labels_if_newer(cfg, data, out)
    except LabelfixError as err:
        if log:
            log(f"note: --resume could not read {data} again to check it is unchanged ({err}); resuming on the "
                f"run's saved labels")
        return
    if now is None:
        return
    from labelfix.run import Run

    recorded = (Run(out).config.get("dataset") or {}).get("fingerprint")
    if now.fingerprint() != (recorded or LabelSet.load(out).fingerprint()):
        raise LabelfixError(f"{data}: its labels, images or classes are not those the run in {out} started "
                            f"with (the file changed since); --resume trains on the run's saved labels: restore "
                            f"the file, or train the new labels into a new --out")


def run_labels(cfg, out, labelset: LabelSet | None = None, split=None) -> tuple[LabelSet, np.ndarray]:
    """The label set and split (int8 (N,): 0 train, 1 validation, 2 held out) a run trains
    on: the run directory's own on ``--resume``, else ``labelset`` / ``split`` when the
    cross-fitting driver gives them, else read from ``cfg.data`` and drawn from the seed.
    Refuses a resume without a checkpoint and a new run over an existing one."""
    out = Path(out)
    last = out / "checkpoints" / "last.pt"
    if cfg.resume:
        if not last.exists():
            raise LabelfixError(f"{last}: no checkpoint to resume from (run without --resume first)")
        return LabelSet.load(out), load_npy(out / "split.npy")
    if last.exists():
        raise LabelfixError(f"{out}: already holds a run (checkpoints/last.pt); "
                            f"pass --resume to continue it or choose another --out")
    labelset = labelset or read_run_labels(cfg, cfg.data)
    split = (split_indices(labelset.num_images, cfg.val_split, cfg.seed) if split is None
             else np.asarray(split, dtype=np.int8))
    return labelset, split


def read_validation(cfg, classes: LabelSet, log=None) -> LabelSet:
    """``--val`` labels with their columns in the training class order (one clear line
    when the class sets differ); ``log`` gets a note when some validation images are
    training images too (the same file), whose mAP is then not held out."""
    val = read_run_labels(cfg, cfg.val)
    if log is not None:
        files = [{str(ls.image_path(r)) for r in range(ls.num_images)} for ls in (val, classes)]
        shared = len(files[0] & files[1])
        if shared:
            log(f"note: {shared} of {val.num_images} --val images are also training images (the same files): "
                f"the validation mAP is partly measured on images the model trains on")
    names = classes.class_names
    missing = sorted(set(names) - set(val.class_names))
    extra = sorted(set(val.class_names) - set(names))
    if missing or extra:
        raise LabelfixError(f"{cfg.val}: classes: validation classes differ from the training classes "
                            f"(missing {missing[:5]}, extra {extra[:5]})")
    order = [val.class_names.index(n) for n in names]
    return LabelSet(np.ascontiguousarray(np.asarray(val.labels)[:, order]), val.images,
                    classes.classes.copy(), val.image_root, dict(val.source))


def cfg_augments(cfg) -> bool:
    """Whether the training transform is random (RandAugment or flips)."""
    return bool(cfg.randaugment or cfg.hflip > 0)


def build_datasets(t):
    """(train transform, eval transform, train, eval and validation datasets) of trainer
    ``t``: images through timm's transforms, or with ``--frozen`` rows of the embedding
    (``features.embed_run``, computed once into ``t.features_dir``)."""
    from labelfix.data.transforms import create_transforms

    cfg, mc = t.cfg, t.model_config
    interp = mc.get("interpolation", "bilinear")
    train_tf = create_transforms(cfg.img_size, mc["mean"], mc["std"], train=True, randaugment=cfg.randaugment,
                                 hflip=cfg.hflip, interpolation=interp)
    eval_tf = create_transforms(cfg.img_size, mc["mean"], mc["std"], train=False, interpolation=interp)
    t.eval_tf = eval_tf   # the embedding below reads it
    if cfg.frozen:
        from labelfix.train.features import FeatureDataset, embed_run

        feats = embed_run(t, t.features_dir)
        val = FeatureDataset(t.val_set, feats["val"]) if t.val_set is not None else None
        return train_tf, eval_tf, FeatureDataset(t.labelset, feats["train"]), \
            FeatureDataset(t.labelset, feats["train"]), val
    # without augmentation the training images are the evaluation images; a cross-fitted
    # run shares one cache between its fold models (the same images, other labels)
    cache: dict = t.image_cache if t.image_cache is not None else {}
    val = KeyedDataset(t.val_set, eval_tf, random=False) if t.val_set is not None else None
    return train_tf, eval_tf, KeyedDataset(t.labelset, train_tf, random=cfg_augments(cfg), cache=cache), \
        KeyedDataset(t.labelset, eval_tf, random=False, cache=cache), val
