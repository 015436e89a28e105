# Label-issue detection quality (methods.md "Evaluation protocol", "Label-issue
# detection quality"): per-cell precision / recall / F1 of suggested corrections and
# average precision (area under the precision-recall curve) of the issue scores, as in
# the cleanlab benchmarks (Northcutt et al., JAIR 2021, Sec. 6) but unknown-aware.
"""Detection metrics of a label cleaner against the true labels.

Conventions (all arrays (N, K), labels int8 1 / 0 / -1):

- ``given``: the noisy labels the cleaner saw; ``true``: the clean labels. Cells whose
  *true* label is unknown (-1) cannot be judged and are left out of every metric.
- **error cell**: a known cell whose given label differs from the true label, or an
  unknown cell whose true label is 1 (a missing positive).
- **suggestion**: a known cell whose suggested label is 1 / 0 and differs from the given
  one, or an unknown cell suggested 1. (Unknown cells suggested 0 are not suggestions:
  an unknown cell that is truly negative is not an error.) A suggestion is **correct**
  when the suggested label equals the true label (it is then necessarily an error cell).
- precision = correct / suggestions, recall = correct / error cells, F1 their harmonic
  mean (NaN when a denominator is 0; F1 = 0 when precision + recall = 0).
- AP: ``sklearn.metrics.average_precision_score`` of the issue score with the error
  cells as positives, over all judged cells (``ap``), and per action: ``ap_add`` over
  cells given 0 or unknown (target: true label 1), ``ap_remove`` over cells given 1
  (target: true label 0). NaN when the population has no positive or no negative.
- Per image: an image is an error image when any of its judged cells is an error; its
  score is the maximum cell score (or a score the caller gives, e.g. cleanlab's image
  label quality); it is flagged when any cell is a suggestion (or a mask the caller gives).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from labelfix.labels import POS, UNK


#: noise kinds whose errors are all unknown cells (missing positives): a detector is scored
#: by the AP over the unknown cells (how well it ranks the missing positives among them),
#: since the AP over all cells would also rank given positives that are never wrong
UNKNOWN_ERRORS = ("missing", "single-positive")


def headline_metric(kind: str) -> str:
    """The detection metric a benchmark reports for noise ``kind``: ``"ap_unknown"`` for
    :data:`UNKNOWN_ERRORS`, else ``"ap"``."""
    return "ap_unknown" if kind in UNKNOWN_ERRORS else "ap"


def _check(name: str, a, shape) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: shape {a.shape} does not match given {tuple(shape)}")
    return a


def error_cells(given, true) -> np.ndarray:
    """bool (N, K): the cells a perfect cleaner would change (see module docstring).
    Cells with an unknown true label are never errors."""
    given = np.asarray(given)
    true = _check("true", true, given.shape)
    judged = true != UNK
    known = given != UNK
    return judged & ((known & (given != true)) | (~known & (true == POS)))


def suggestion_cells(given, suggested) -> np.ndarray:
    """bool (N, K): cells where the suggested label is a change of the given one: a known
    cell with ``suggested`` in {0, 1} and != given, or an unknown cell suggested 1."""
    given = np.asarray(given)
    suggested = _check("suggested", suggested, given.shape)
    known = given != UNK
    return (known & (suggested != UNK) & (suggested != given)) | (~known & (suggested == POS))


def average_precision(target, score) -> float:
    """``average_precision_score(target, score)``; NaN when ``target`` is constant or empty."""
    target = np.asarray(target, dtype=bool).ravel()
    if target.size == 0 or target.all() or not target.any():
        return float("nan")
    return float(average_precision_score(target, np.asarray(score, dtype=np.float64).ravel()))


def precision_at_recall(given, true, score, recall: float) -> float:
    """Precision of the shortest top of the ranking by ``score`` (over the judged cells)
    that reaches ``recall`` of the error cells: how precise a cleaner that flags by this
    score would be at another cleaner's recall. NaN when ``recall`` is NaN or not in
    (0, 1], or when there is no error cell.

    Args:
        given, true: int8 (N, K) labels as in :func:`detection_metrics`.
        score: float (N, K) issue score, higher = more likely an error (NaN lowest).
        recall: the target recall.
    """
    given = np.asarray(given)
    true = _check("true", true, given.shape)
    score = _nan_lowest(_check("score", score, given.shape))
    judged = true != UNK
    err = error_cells(given, true)[judged]
    if not np.isfinite(recall) or not 0.0 < recall <= 1.0 or not err.any():
        return float("nan")
    order = np.argsort(-score[judged], kind="stable")
    hits = np.cumsum(err[order])
    n = int(np.searchsorted(hits, recall * err.sum() - 1e-9)) + 1   # first top-n reaching the recall
    return float(hits[n - 1] / n)


def _nan_lowest(score) -> np.ndarray:
    """float64 copy with NaN replaced by a value below every other score."""
    score = np.asarray(score, dtype=np.float64)
    nan = np.isnan(score)
    if nan.any():
        low = score[~nan].min() - 1.0 if (~nan).any() else 0.0
        score = np.where(nan, low, score)
    return score


def _prf(correct: int, suggestions: int, errors: int) -> tuple[float, float, float]:
    precision = correct / suggestions if suggestions else float("nan")
    recall = correct / errors if errors else float("nan")
    if np.isnan(precision) or np.isnan(recall):
        f1 = float("nan")
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def detection_metrics(
    given,
    true,
    score,
    suggested=None,
    *,
    image_score=None,
    image_flagged=None,
) -> dict[str, float]:
    """Per-cell and per-image detection quality of one cleaner.

    Args:
        given: int8 (N, K) labels the cleaner saw (1 / 0 / -1).
        true: int8 (N, K) clean labels (-1 cells are not judged).
        score: float (N, K) issue score, higher = more likely an error (NaN counts as
            the lowest score).
        suggested: int8 (N, K) suggested labels (1 / 0 / -1 = no suggestion); None skips
            the precision / recall / F1 entries (NaN).
        image_score: float (N,) per-image score; None -> max cell score over judged cells.
        image_flagged: bool (N,) images the cleaner flags; None -> any cell suggestion.

    Returns:
        dict with ``errors``, ``suggestions``, ``correct``, ``precision``, ``recall``,
        ``f1``, ``ap``, ``ap_add``, ``ap_remove``, ``ap_unknown`` (over the unknown cells:
        how well the missing positives are ranked among them), ``errors_add``, ``errors_remove``,
        ``image_errors``, ``image_flagged``, ``image_precision``, ``image_recall``,
        ``image_f1``, ``image_ap`` (counts as float).
    """
    given = np.asarray(given)
    true = _check("true", true, given.shape)
    score = _nan_lowest(_check("score", score, given.shape))
    judged = true != UNK
    err = error_cells(given, true)
    out: dict[str, float] = {"errors": float(err.sum())}

    if suggested is not None:
        suggested = _check("suggested", suggested, given.shape)
        sug = suggestion_cells(given, suggested) & judged
        correct = sug & (suggested == true)
        p, r, f = _prf(int(correct.sum()), int(sug.sum()), int(err.sum()))
        out.update(suggestions=float(sug.sum()), correct=float(correct.sum()), precision=p, recall=r, f1=f)
    else:
        sug = None
        out.update(suggestions=float("nan"), correct=float("nan"), precision=float("nan"),
                   recall=float("nan"), f1=float("nan"))

    out["ap"] = average_precision(err[judged], score[judged])
    add_pop = judged & (given != POS)           # given 0 or unknown
    rem_pop = judged & (given == POS)
    out["ap_add"] = average_precision(true[add_pop] == POS, score[add_pop])
    out["ap_remove"] = average_precision(true[rem_pop] != POS, score[rem_pop])
    unk_pop = judged & (given == UNK)
    out["ap_unknown"] = average_precision(true[unk_pop] == POS, score[unk_pop])
    out["errors_add"] = float((err & add_pop).sum())
    out["errors_remove"] = float((err & rem_pop).sum())

    # per image
    img_err = err.any(1)
    if image_score is None:
        masked = np.where(judged, score, -np.inf)
        image_score = masked.max(1) if masked.shape[1] else np.zeros(masked.shape[0])
        image_score = np.where(np.isneginf(image_score), 0.0, image_score)
    else:
        image_score = _check("image_score", image_score, (given.shape[0],)).astype(np.float64)
    if image_flagged is None:
        image_flagged = sug.any(1) if sug is not None else None
    else:
        image_flagged = _check("image_flagged", image_flagged, (given.shape[0],)).astype(bool)
    out["image_errors"] = float(img_err.sum())
    if image_flagged is not None:
        correct_img = image_flagged & img_err
        p, r, f = _prf(int(correct_img.sum()), int(image_flagged.sum()), int(img_err.sum()))
        out.update(image_flagged=float(image_flagged.sum()), image_precision=p, image_recall=r, image_f1=f)
    else:
        out.update(image_flagged=float("nan"), image_precision=float("nan"), image_recall=float("nan"),
                   image_f1=float("nan"))
    out["image_ap"] = average_precision(img_err, image_score)
    return out
