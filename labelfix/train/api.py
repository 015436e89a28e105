"""``train(cfg)``: the entry point of ``labelfix train`` from Python, one run
(:class:`labelfix.train.engine.Trainer`) or a cross-fitted one
(:func:`labelfix.train.crossfit.train_folds`)."""

from __future__ import annotations

import os
from typing import Callable

from labelfix.errors import LabelfixError
from labelfix.train.config import TrainConfig


def train(cfg: TrainConfig, callbacks: list | None = None, log: Callable[[str], None] | None = None,
          fold_pool=None) -> dict:
    """Train as configured (``cfg.folds`` >= 2: cross-fitted, ``crossfit.py``, in the open
    ``labelfix.train.foldpool.FoldPool`` ``fold_pool`` if given); returns ``{"epochs",
    "metrics", "skipped", "out"}``."""
    if not cfg.folds and not cfg.dynamics:   # here, as a fold model's own options have folds 0
        raise LabelfixError("train: --no-dynamics: only cross-fitting's fold models can skip the per-epoch pass "
                            "(a single model's GMMs fit its loss over the epochs); has no effect without --folds")
    from labelfix.train.progress import to_stderr

    main = int(os.environ.get("RANK", "0")) == 0   # torchrun: one rank reads DATA and notes
    if cfg.warmup_epochs > cfg.epochs and main:
        (log or to_stderr)(f"note: --warmup-epochs {cfg.warmup_epochs:g} is longer than --epochs {cfg.epochs}: the "
                           f"learning rate is still rising when training ends and never reaches --lr {cfg.lr:g}")
    if cfg.mix == "balancemix" and main:
        from labelfix.train.balancemix import warmup_epochs

        w = warmup_epochs(cfg)
        if w == cfg.epochs:   # allowed (config.TrainConfig._check_balancemix_warmup), but said
            (log or to_stderr)(f"note: --balancemix-warmup {w} equals --epochs {cfg.epochs}: label management is "
                               f"fitted after the last epoch and never trains (a --resume with more --epochs "
                               f"trains with it)")
    if cfg.resume and main:
        from labelfix.train.data import check_resume_data

        check_resume_data(cfg, log or to_stderr)
    if cfg.folds:
        from labelfix.train.crossfit import train_folds

        return train_folds(cfg, callbacks=callbacks, log=log, fold_pool=fold_pool)
    if fold_pool is not None:
        raise ValueError("fold_pool: only a cross-fitted run (folds >= 2) trains in a fold pool")
    from labelfix.train.engine import Trainer

    return Trainer(cfg, callbacks=callbacks, log=log).fit()
