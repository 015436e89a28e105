"""Training: ``train(TrainConfig(...))`` runs ``labelfix train`` from Python.

Modules: ``config`` (options), ``engine`` (loop, checkpoints, resume), ``sampler``
(seeded / BalanceMix minority / distributed samplers), ``stats`` (per-cell statistics
pass), ``balancemix`` (per-epoch label management), ``distributed`` (torchrun),
``metrics`` (partial-label mAP). User guide: docs/training.md.
"""

from labelfix.train.config import TrainConfig, load_config_file, read_run_config
from labelfix.train.engine import Trainer, TrainingInterrupted, train

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "load_config_file", "read_run_config", "train"]
