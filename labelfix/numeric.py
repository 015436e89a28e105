"""Small numpy helpers every stage shares (one home each, no torch import): the logistic
function, per-cell binary cross-entropy against tri-state labels, and row chunking.

Conventions: labels are int8 1 / 0 / -1 (unknown); a per-cell loss of an unknown cell is
scored against 0 (the "assume negative" reading), callers mask it when they must not.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

#: clip of probabilities before a log (maximum per-cell loss 16.1)
PROB_EPS = 1e-7
#: cells per chunk of the chunked array cores (about 8 MB of float32)
CHUNK_CELLS = 1 << 21


def sigmoid(logits) -> np.ndarray:
    """Logistic function of ``logits`` (any shape), without overflow (tanh form): float64
    for float64 input, else float32."""
    x = np.asarray(logits)
    x = x if x.dtype == np.float64 else x.astype(np.float32)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logit(probs) -> np.ndarray:
    """float32 log(p / (1 - p)) with p clipped to [PROB_EPS, 1 - PROB_EPS]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def bce_logits(logits, labels) -> np.ndarray:
    """float32 per-cell BCE of ``logits`` against ``labels == 1`` (same shape): softplus(-z)
    for a positive, softplus(z) otherwise, in the stable form max(t, 0) + log(1 + e^-|t|);
    an infinite logit gives 0 or +inf (not NaN, which ``softplus(z) - y z`` gave), NaN
    logits give NaN."""
    z = np.asarray(logits, dtype=np.float32)
    t = np.where(np.asarray(labels) == 1, -z, z)
    return (np.maximum(t, 0) + np.log1p(np.exp(-np.abs(t)))).astype(np.float32)


def bce_probs(probs, labels) -> np.ndarray:
    """float32 per-cell BCE of probabilities (clipped to [PROB_EPS, 1 - PROB_EPS]) against
    ``labels == 1``."""
    y = (np.asarray(labels) == 1).astype(np.float32)
    p = np.clip(np.asarray(probs, dtype=np.float32), PROB_EPS, 1 - PROB_EPS)
    return (-(y * np.log(p) + (1 - y) * np.log1p(-p))).astype(np.float32)


def chunk_rows(n_cols: int, cells: int = CHUNK_CELLS) -> int:
    """Rows per chunk so that one chunk holds about ``cells`` cells."""
    return max(1, int(cells) // max(1, int(n_cols)))


def row_chunks(n_rows: int, rows: int) -> Iterator[slice]:
    """Consecutive ``slice``s of at most ``rows`` rows covering ``range(n_rows)``."""
    for start in range(0, int(n_rows), max(1, int(rows))):
        yield slice(start, min(start + rows, n_rows))
