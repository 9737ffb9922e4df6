"""Exact nearest-neighbour search: cosine similarity (inner product of L2-normalised features) and l2.

Exact flat indexes, not approximate ones: the replication share hinges on the few highest similarities,
which is exactly where an approximate index may miss. faiss is optional (`pip install "cpsample[faiss]"`); without
it the same exact search runs in NumPy (`NumpyFlatIndex`, float64 products, ties to the lower row as faiss
breaks them), which gives the same neighbours; faiss is faster on large reference sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from cpsample.evaluation.inputs import as_features

try:
    import faiss
except ImportError:  # optional dependency: the NumPy index below does the same exact search
    faiss = None

DEFAULT_BATCH = 4096
BACKENDS = ("faiss", "numpy")
_BLOCK = 1 << 23  # query x reference products per NumPy block (64 MB of float64)


@dataclass
class Neighbours:
    """For each query, its k nearest references, best first."""

    scores: np.ndarray  # (N, k) cosine similarities (descending) or l2 distances (ascending)
    indices: np.ndarray  # (N, k) int64 row numbers into the reference set

    @property
    def nearest_score(self) -> np.ndarray:
        return self.scores[:, 0]

    @property
    def nearest_index(self) -> np.ndarray:
        return self.indices[:, 0]


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row (e.g. a constant image, centred) stays zero and matches nothing."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


class NumpyFlatIndex:
    """An exact flat index with faiss's interface (add, search, ntotal) for metric "ip" or "l2", in NumPy.

    search returns (scores, rows) like faiss: inner products best (highest) first, or squared l2 distances nearest
    first; equal scores go to the lower row. Products are taken in float64, so near-ties order by their true values.
    """

    def __init__(self, dim: int, metric: str):
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        self.dim, self.metric = int(dim), metric
        self._data = np.zeros((0, self.dim), dtype=np.float64)
        self._squared = np.zeros(0, dtype=np.float64)

    @property
    def ntotal(self) -> int:
        return len(self._data)

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim).astype(np.float64)
        self._data = np.concatenate([self._data, vectors])
        self._squared = np.einsum("ij,ij->i", self._data, self._data)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim).astype(np.float64)
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} neighbours asked for, but the index holds {self.ntotal} items")
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        step = max(1, _BLOCK // max(self.ntotal, 1))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            products = block @ self._data.T
            if self.metric == "ip":
                keys = -products
            else:
                keys = np.maximum(
                    np.einsum("ij,ij->i", block, block)[:, None] + self._squared[None] - 2.0 * products, 0.0
                )
            order = np.argsort(keys, axis=1, kind="stable")[:, :k]  # stable: equal scores keep the lower row first
            best = np.take_along_axis(keys, order, axis=1)
            scores[start : start + step] = -best if self.metric == "ip" else best
            rows[start : start + step] = order
        return scores, rows


def has_faiss() -> bool:
    return faiss is not None


def flat_index(dim: int, metric: str = "ip", backend: str | None = None):
    """An exact flat index: faiss's where faiss is installed (or backend="faiss"), else NumpyFlatIndex."""
    if backend not in (None, *BACKENDS):
        raise ValueError(
            f"backend must be one of {', '.join(BACKENDS)} or None (faiss when installed), got {backend!r}"
        )
    if backend == "faiss" and faiss is None:
        raise ImportError(
            'faiss is not installed: pip install "cpsample[faiss]" (or faiss-cpu), or use backend="numpy"'
        )
    if backend == "numpy" or faiss is None:
        return NumpyFlatIndex(dim, metric)
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)


def nearest_by_cosine(
    queries: np.ndarray,
    references: np.ndarray,
    k: int = 1,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
    backend: str | None = None,
) -> Neighbours:
    """Top-k cosine similarities of each query to the references (exact inner product of normalised features).

    backend: "faiss", "numpy" or None (faiss when installed); both give the same neighbours.
    """
    queries, references = _check_pair(queries, references, k)
    index = flat_index(references.shape[1], "ip", backend)
    index.add(l2_normalise(references))
    scores, indices = _search(index, l2_normalise(queries), k, batch_size, progress, "cosine NN search")
    return Neighbours(scores=np.clip(scores, -1.0, 1.0), indices=indices)


def nearest_by_l2(
    queries: np.ndarray,
    references: np.ndarray,
    k: int = 1,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
    backend: str | None = None,
) -> Neighbours:
    """Top-k Euclidean distances of each query to the references (the flat l2 index returns squared distances)."""
    queries, references = _check_pair(queries, references, k)
    index = flat_index(references.shape[1], "l2", backend)
    index.add(references)
    squared, indices = _search(index, queries, k, batch_size, progress, "l2 NN search")
    return Neighbours(scores=np.sqrt(np.maximum(squared, 0.0)), indices=indices)


def _check_pair(queries: np.ndarray, references: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries, references = as_features(queries, "query features"), as_features(references, "reference features")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(
            f"query features have {queries.shape[1]} dimensions but reference features have {references.shape[1]}"
        )
    if not 1 <= k <= len(references):
        raise ValueError(f"k={k} neighbours asked for, but the reference set holds {len(references)} items")
    return queries, references


def _search(index, queries: np.ndarray, k: int, batch_size: int, progress: bool, what: str):
    """Search in batches so the (batch x references) distance block stays small in memory."""
    scores, indices = [], []
    starts = range(0, len(queries), batch_size)
    for start in tqdm(starts, desc=what, disable=not progress or len(starts) < 2, leave=False):
        batch_scores, batch_indices = index.search(queries[start : start + batch_size], k)
        scores.append(batch_scores)
        indices.append(batch_indices)
    return np.concatenate(scores).astype(np.float32), np.concatenate(indices).astype(np.int64)
