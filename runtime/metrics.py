"""Numpy-only measures shared by the exporter's checks and the device-side validation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Resamples behind a gate's bootstrap bound: at 1000 the bound of a 256-item mean moves by about 1e-4 with the seed.
RESAMPLES = 1000
#: The 1st percentile: a worst case that, unlike the minimum, a sample of a few hundred items estimates.
TAIL = 0.01
#: Per-item statistics a gate's metric is computed with, vectorised over the last axis (one row per resample).
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=-1),
    "p01": lambda x: np.quantile(x, TAIL, axis=-1),
    "min": lambda x: x.min(axis=-1),
}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over the sequence axis: the sentence embedding of sentence-transformers models."""
    weights = mask[..., None].astype(hidden.dtype)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` to the same row of ``b``, accumulated in float64."""
    dot = (a * b).sum(-1, dtype=np.float64)
    norms = np.sqrt((a * a).sum(-1, dtype=np.float64) * (b * b).sum(-1, dtype=np.float64))
    return dot / np.maximum(norms, 1e-12)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def cosine_matrix(a: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of the rows of ``a``."""
    unit = _unit_rows(a)
    return unit @ unit.T


def neighbour_agreements(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> np.ndarray | None:
    """Per item, the share of its k nearest neighbours (by cosine, itself excluded) that both models agree on.

    None for fewer than two items: nobody has a neighbour.
    """
    k = min(k, len(reference) - 1)
    if k < 1:
        return None
    top = []
    for embeddings in (reference, candidate):
        similarity = cosine_matrix(embeddings)
        np.fill_diagonal(similarity, -np.inf)
        top.append(np.argpartition(-similarity, k, axis=1)[:, :k])
    return np.array([len(np.intersect1d(r, c)) / k for r, c in zip(*top)])


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float | None:
    """The mean of :func:`neighbour_agreements`."""
    agreements = neighbour_agreements(reference, candidate, k)
    return None if agreements is None else float(agreements.mean())


def bootstrap(samples: np.ndarray, statistic: str, seed: int = 0) -> np.ndarray:
    """``statistic`` (a name in :data:`STATISTICS`) of :data:`RESAMPLES` resamples of the per-item ``samples``,
    drawn with replacement; the same seed, the same resamples."""
    rng = np.random.default_rng(seed)
    values = [STATISTICS[statistic](samples[rng.integers(0, len(samples), size=(100, len(samples)))])
              for _ in range(RESAMPLES // 100)]  # a hundred at a time: memory stays 100 x items
    return np.concatenate(values)


def spearman_of_similarities(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Spearman correlation between the two models' pairwise cosine similarities (each pair once).

    None where it is undefined: fewer than two pairs, or one model gives every pair the same similarity.
    """
    upper = np.triu_indices(len(reference), k=1)
    a, b = _ranks(cosine_matrix(reference)[upper]), _ranks(cosine_matrix(candidate)[upper])
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    value = float(np.corrcoef(a, b)[0, 1])
    return value if np.isfinite(value) else None


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts + 1) / 2)[inverse]
