"""Training: ``train(TrainConfig(...))`` runs ``labelfix train`` from Python.

Modules: ``api`` (``train``), ``config`` (options), ``engine`` (the loop), ``sampler``
(seeded / BalanceMix minority / distributed samplers), ``stats`` (per-cell statistics
pass), ``balancemix`` (per-epoch label management), ``distributed`` (torchrun),
``metrics`` (partial-label mAP). User guide: docs/training.md.

The names are imported on first use (PEP 562): ``labelfix.train.config`` must load
without torch (``labelfix --help`` and ``labelfix train --help`` import it).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "labelfix.train.config",
    "load_config_file": "labelfix.train.config",
    "read_run_config": "labelfix.train.config",
    "Trainer": "labelfix.train.engine",
    "TrainingInterrupted": "labelfix.train.checkpoint",
    "train": "labelfix.train.api",
}

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "load_config_file", "read_run_config", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labelfix.train' has no attribute {name!r}")
