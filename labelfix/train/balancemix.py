# BalanceMix (Song, Kim, Lee, AAAI 2024), Sec. "Minority-augmented mixing" and
# "Fine-grained label-wise management": the per-epoch glue inside training.
"""BalanceMix's once-per-epoch work during training.

After every epoch's evaluation pass (``stats.py``):

1. minority sampler weights from the pass's probabilities f (``minority_sampling_weights``
   on the training rows) -- every epoch, from epoch 2 on (epoch 1 samples uniformly);
2. after ``warmup`` epochs: 2K label GMMs on the training cells' BCE losses
   (``labelfix.cleaning.gmm.fit_label_gmms``), p_G for every known training cell;
3. two RandAugment views only of the training images that have at least one non-clean
   cell (the engine runs that pass), c = mean probability, written to
   ``stats/two_view.npy`` (NaN everywhere else);
4. ``labelfix.cleaning.states.assign_states`` -> per-cell training target and weight
   used by the loss in the next epoch (clean / re-labeled: weight 1; ambiguous: p_G).

Everything here is array-in / array-out and deterministic, so a resumed run rebuilds the
same management from ``stats/logits.npy`` and ``stats/two_view.npy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfix.cleaning.gmm import clean_posterior, fit_label_gmms
from labelfix.cleaning.states import AMBIGUOUS, CLEAN, RELABELED, assign_states
from labelfix.mixing.balancemix import minority_sampling_weights
from labelfix.train.stats import CHUNK_ROWS, cell_bce


def sigmoid_rows(logits) -> np.ndarray:
    """float64 probabilities of an (M, K) logit array (NaN rows -> 0.5)."""
    z = np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=0.0)
    return 1.0 / (1.0 + np.exp(-z))


def minority_weights(logits, given, train_rows: np.ndarray) -> tuple[np.ndarray, dict]:
    """Minority-sampler weights (M,) over ``train_rows`` and a summary of their spread."""
    rows = np.asarray(train_rows)
    probs = sigmoid_rows(logits[rows])
    res = minority_sampling_weights(probs, np.asarray(given[rows]))
    return res.weights, res.summary()


def train_losses(logits, given, train_rows: np.ndarray) -> np.ndarray:
    """float32 (M, K) BCE of the training rows against their given labels."""
    rows = np.asarray(train_rows)
    out = np.empty((rows.size, given.shape[1]), dtype=np.float32)
    for s in range(0, rows.size, CHUNK_ROWS):
        r = rows[s:s + CHUNK_ROWS]
        out[s:s + CHUNK_ROWS] = cell_bce(logits[r], np.asarray(given[r]))
    return out


def clean_probability(losses: np.ndarray, given_rows: np.ndarray) -> np.ndarray:
    """p_G (M, K) from the 2K label GMMs (NaN on unknown cells).

    NaN losses (images that failed to decode) are excluded from the fit; their cells
    come out NaN and are then treated as clean (no evidence against them)."""
    g = np.where(np.isnan(losses), np.int8(-1), np.asarray(given_rows)).astype(np.int8)
    fit = fit_label_gmms(losses, g)
    return clean_posterior(losses, g, fit)


def images_to_rescore(p_clean: np.ndarray, given_rows: np.ndarray, clean_threshold: float) -> np.ndarray:
    """Positions (into the training rows) of images with at least one known non-clean cell."""
    nonclean = (np.asarray(given_rows) >= 0) & (np.nan_to_num(p_clean, nan=1.0) <= clean_threshold)
    return np.flatnonzero(nonclean.any(axis=1))


@dataclass
class Management:
    """Per-cell training labels for the next epoch, over all N rows (validation rows and
    rows of images that failed keep their given labels with weight 1)."""

    target: np.ndarray   # int8 (N, K): 1 / 0 / -1
    weight: np.ndarray   # float32 (N, K)
    counts: dict         # clean / relabeled / ambiguous cell counts over the training rows


def manage(given, train_rows: np.ndarray, p_clean: np.ndarray, two_view_rows: np.ndarray | None,
           clean_threshold: float, delta: float) -> Management:
    """Assign states on the training rows and return full (N, K) target / weight."""
    rows = np.asarray(train_rows)
    g_rows = np.asarray(given[rows])
    state, target_rows, weight_rows = assign_states(g_rows, p_clean, two_view_rows,
                                                    clean_threshold=clean_threshold, delta=delta)
    target = np.array(given, dtype=np.int8, copy=True)
    weight = (target >= 0).astype(np.float32)
    target[rows] = target_rows
    weight[rows] = weight_rows
    counts = {
        "clean": int((state == CLEAN).sum()),
        "relabeled": int((state == RELABELED).sum()),
        "ambiguous": int((state == AMBIGUOUS).sum()),
    }
    return Management(target=target, weight=weight, counts=counts)
