# Evidence from similar images: the labels of an image's k nearest neighbours in a feature
# space (the k-NN label estimate used for noisy-label detection without a classifier, e.g.
# Zhu, Dong & Liu, "Detecting Corrupted Labels Without Training a Model", ICML 2022), made
# unknown-aware: only neighbours that know a class vote on it.
"""Neighbour agreement and near-duplicate groups from image embeddings.

``neighbour_estimates(features, given, query_rows, base_rows, k)``: for each query image,
the fraction of its k nearest base images (cosine similarity) whose *known* label for a
class is positive; a class no neighbour knows stays NaN. Neighbours come from scikit-
learn's ``NearestNeighbors`` (brute force on L2-normalised features, which ranks by cosine);
an image is never its own neighbour.

``duplicate_groups(pairs, ...)``: groups of near-identical images (the neighbour pairs with
cosine >= threshold that the same search found), with the classes on which their known
labels conflict and whether a group crosses the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError
from labelfix.labels import NEG, POS

#: neighbours per image (docs/cleaning.md "Neighbours": chosen on the demo data's seed 0
#: among 10 / 20 / 50 / 100 / all, benchmarks/results/rescore_neighbours.md)
DEFAULT_K = 50
#: queries per block of the search and the vote count (memory, not the result)
QUERY_CHUNK = 4096
#: features are reduced to this many principal components first when wider (speed)
PCA_DIMS = 128
#: cosine similarity from which two images count as near-duplicates
DUPLICATE_SIMILARITY = 0.99
#: ... and only when their cosine distance is also below this share of the embedding's
#: typical distance to the DUPLICATE_REFERENCE_RANK-th neighbour (the median over the
#: queries): an embedding that does not tell images apart (a model that trained little)
#: puts most images within 0.01 of several others, and 51 different images of a user's
#: test were one "group"
DUPLICATE_RELATIVE = 0.1
#: the neighbour whose typical distance sets that scale (10: the k with which the rule
#: was set; it does not move with ``k``, which only adds candidate pairs)
DUPLICATE_REFERENCE_RANK = 10


def _unit(features: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(features, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _reduce(x: np.ndarray, fit_rows: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """Project onto the first ``dims`` principal components of ``x[fit_rows]`` (then
    re-normalise), when ``x`` is wider than that."""
    if x.shape[1] <= dims or fit_rows.size <= dims:
        return x
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(x[fit_rows])
    return _unit(pca.transform(x))


@dataclass
class NeighbourEstimates:
    """``estimate``: float32 (Q, K), share of the known neighbour labels that are positive
    (NaN where no neighbour knows the class); ``support``: int16 (Q, K), how many
    neighbours know it; ``rows``: int64 (Q,), the query rows; ``similarity``: float32
    (Q,), mean cosine similarity to the neighbours; ``duplicates``: int64 (P, 2), pairs
    of rows (query, neighbour) with cosine >= :data:`DUPLICATE_SIMILARITY`."""

    estimate: np.ndarray
    support: np.ndarray
    rows: np.ndarray
    similarity: np.ndarray
    duplicates: np.ndarray


def neighbour_estimates(features: np.ndarray, given: np.ndarray, query_rows=None, base_rows=None,
                        k: int = DEFAULT_K, chunk_rows: int = QUERY_CHUNK) -> NeighbourEstimates:
    """k-NN label estimates (module docstring).

    Args:
        features: float (N, D) embeddings (float16 memmap is fine); NaN rows (images
            that failed to decode) are never neighbours and get NaN estimates.
        given: int8 (N, K) labels 1 / 0 / -1.
        query_rows, base_rows: int arrays of rows (default: all); a row in both is not its
            own neighbour.
        k: neighbours per query (all base rows when fewer).
        chunk_rows: queries searched and counted per block (memory: a block holds
            ``chunk_rows x (k + 1) x K`` label cells).
    """
    n = len(given)
    if features.shape[0] != n:
        raise LabelfixError(f"features: {features.shape[0]} rows for {n} labelled images")
    if k < 1:
        raise LabelfixError(f"neighbours: k={k}: must be >= 1")
    query = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    base = np.arange(n) if base_rows is None else np.asarray(base_rows, dtype=np.int64)
    x = np.asarray(features, dtype=np.float32)
    finite = np.isfinite(x).all(1)
    base = base[finite[base]]
    kk = len(given[0]) if n else 0
    estimate = np.full((query.size, kk), np.nan, dtype=np.float32)
    support = np.zeros((query.size, kk), dtype=np.int16)
    similarity = np.full(query.size, np.nan, dtype=np.float32)
    no_pairs = np.zeros((0, 2), dtype=np.int64)
    if base.size < 2 or query.size == 0:
        return NeighbourEstimates(estimate, support, query, similarity, no_pairs)
    from sklearn.neighbors import NearestNeighbors

    x = _reduce(_unit(x), base)
    m = min(k + 1, base.size)
    index = NearestNeighbors(n_neighbors=m, algorithm="brute").fit(x[base])
    given = np.asarray(given)
    q_ok = np.flatnonzero(finite[query])
    step = max(1, int(chunk_rows))
    ref = np.empty(q_ok.size, dtype=np.float64)   # each query's distance to its reference neighbour
    candidates = []                               # (query row, neighbour row, cosine distance) within the cap
    for lo in range(0, q_ok.size, step):
        at = q_ok[lo:lo + step]
        d, pos = index.kneighbors(x[query[at]])   # float64 distances between unit vectors
        nb = base[pos]                            # (chunk, m) neighbour rows
        not_self = nb != query[at][:, None]
        # keep the first k neighbours that are not the query itself
        keep = not_self & (np.cumsum(not_self, axis=1) <= k)
        g = given[nb]                             # (chunk, m, K)
        w = keep[..., None]
        pos_votes = ((g == POS) & w).sum(1)
        known_votes = (((g == POS) | (g == NEG)) & w).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate[at] = np.where(known_votes > 0, pos_votes / known_votes, np.nan)
        support[at] = known_votes
        sim = 1.0 - d ** 2 / 2.0
        similarity[at] = (sim * keep).sum(1) / np.maximum(keep.sum(1), 1)
        cos_dist = 1.0 - sim
        ref[lo:lo + at.size] = reference_distance(cos_dist, keep & (np.cumsum(keep, axis=1) <= DUPLICATE_REFERENCE_RANK))
        qi, ni = np.nonzero(keep & (cos_dist <= 1.0 - DUPLICATE_SIMILARITY))
        candidates.append((query[at][qi], nb[qi, ni], cos_dist[qi, ni]))
    q_rows, n_rows, cos_dist = (np.concatenate(c) for c in zip(*candidates)) if candidates else ((), (), ())
    within = np.asarray(cos_dist) <= duplicate_threshold(ref)
    pairs = np.stack([np.asarray(q_rows)[within], np.asarray(n_rows)[within]], axis=1).astype(np.int64) \
        if within.any() else no_pairs
    return NeighbourEstimates(estimate, support, query, similarity, pairs)


def reference_distance(dist: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """float64 (Q,): each query's distance to the last of its reference neighbours
    (``keep``, bool (Q, m)); -inf for a query without one."""
    return np.where(keep, dist, -np.inf).max(1)


def duplicate_threshold(reference: np.ndarray) -> float:
    """The cosine distance up to which a pair counts as a near-duplicate, from the
    queries' :func:`reference_distance` values: ``1 - DUPLICATE_SIMILARITY``, or less
    where their median is small (:data:`DUPLICATE_RELATIVE` of it)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    typical = float(np.median(ref)) if ref.size else 0.0
    return min(1.0 - DUPLICATE_SIMILARITY, DUPLICATE_RELATIVE * typical)


def duplicate_groups(pairs: np.ndarray, given: np.ndarray, split: np.ndarray | None = None,
                     class_names=None) -> pd.DataFrame:
    """Near-duplicate images grouped by connected components of the ``pairs`` (int (P, 2)
    rows, e.g. :attr:`NeighbourEstimates.duplicates`), one row per image of a group:
    ``group``, ``row``, ``conflicts`` (classes some member knows as positive and another as
    negative, "; "-joined), ``crosses_split`` (members in both the training and the
    validation split)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    cols = ["group", "row", "conflicts", "crosses_split"]
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size == 0:
        return pd.DataFrame(columns=cols)
    rows = np.unique(pairs)
    local = np.searchsorted(rows, pairs)
    graph = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(rows.size, rows.size))
    _, comp = connected_components(graph, directed=False)
    names = list(class_names) if class_names is not None else [str(c) for c in range(given.shape[1])]
    out = []
    for gid, c in enumerate(np.unique(comp)):
        members = rows[comp == c]
        g = np.asarray(given)[members]
        clash = np.flatnonzero((g == POS).any(0) & (g == NEG).any(0))
        crosses = bool(split is not None and len(set(np.asarray(split)[members].tolist()) & {0, 1}) == 2)
        for r in members:
            out.append((gid, int(r), "; ".join(names[j] for j in clash), crosses))
    return pd.DataFrame(out, columns=cols)
