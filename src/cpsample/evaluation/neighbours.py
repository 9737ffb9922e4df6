"""Exact nearest-neighbour search with faiss: cosine similarity (inner product of L2-normalised features) and l2.

Exact flat indexes, not approximate ones: the replication share hinges on the few highest similarities,
which is exactly where an approximate index may miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from cpsample.evaluation.inputs import as_features

DEFAULT_BATCH = 4096


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


def nearest_by_cosine(queries: np.ndarray, references: np.ndarray, k: int = 1, batch_size: int = DEFAULT_BATCH,
                      progress: bool = True) -> Neighbours:
    """Top-k cosine similarities of each query to the references (faiss IndexFlatIP on normalised features)."""
    queries, references = _check_pair(queries, references, k)
    index = faiss.IndexFlatIP(references.shape[1])
    index.add(l2_normalise(references))
    scores, indices = _search(index, l2_normalise(queries), k, batch_size, progress, "cosine NN search")
    return Neighbours(scores=np.clip(scores, -1.0, 1.0), indices=indices)


def nearest_by_l2(queries: np.ndarray, references: np.ndarray, k: int = 1, batch_size: int = DEFAULT_BATCH,
                  progress: bool = True) -> Neighbours:
    """Top-k Euclidean distances of each query to the references (faiss IndexFlatL2 returns squared distances)."""
    queries, references = _check_pair(queries, references, k)
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(references)
    squared, indices = _search(index, queries, k, batch_size, progress, "l2 NN search")
    return Neighbours(scores=np.sqrt(np.maximum(squared, 0.0)), indices=indices)


def _check_pair(queries: np.ndarray, references: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries, references = as_features(queries, "query features"), as_features(references, "reference features")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"query features have {queries.shape[1]} dimensions but reference features have {references.shape[1]}")
    if not 1 <= k <= len(references):
        raise ValueError(f"k={k} neighbours asked for, but the reference set holds {len(references)} items")
    return queries, references


def _search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int, progress: bool, what: str):
    """Search in batches so the (batch x references) distance block stays small in memory."""
    scores, indices = [], []
    starts = range(0, len(queries), batch_size)
    for start in tqdm(starts, desc=what, disable=not progress or len(starts) < 2, leave=False):
        batch_scores, batch_indices = index.search(queries[start:start + batch_size], k)
        scores.append(batch_scores)
        indices.append(batch_indices)
    return np.concatenate(scores).astype(np.float32), np.concatenate(indices).astype(np.int64)
