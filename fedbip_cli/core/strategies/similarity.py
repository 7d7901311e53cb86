"""Pairwise similarity of task vectors, from Gram matrices accumulated one tensor name at a time.

The cosine over the concatenation of all tensors is G_ik / sqrt(G_ii G_kk) with G = sum over tensors
of X X^T (X: clients x elements), so no client's whole vector is ever held in memory. Grouping the
same sums by module gives the layer-wise matrices of FedBip-L. The engines (`engine.factor_space`,
`engine.delta_space`) compute each tensor's or module's Gram matrix and add it here with `add_gram`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

GLOBAL = "*"


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine matrix from a Gram matrix; symmetric, unit diagonal.

    Rule for all-zero vectors (cosine undefined): similarity 0 to every other client and 1 to itself,
    so an idle client neither pulls others nor is pulled, and keeps its own adapter.
    """
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    safe = np.where(norms > 0, norms, 1.0)
    cos = gram / safe[:, None] / safe[None, :]
    cos[norms == 0, :] = 0.0
    cos[:, norms == 0] = 0.0
    cos = np.clip((cos + cos.T) / 2, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos


def zero_clients(gram: np.ndarray) -> list[int]:
    """Indices of clients whose vector is all zeros (squared norm 0)."""
    return [i for i, v in enumerate(np.diag(gram)) if v <= 0.0]


def add_gram(grams: dict[str, np.ndarray], group: str, gram: np.ndarray) -> None:
    """Add one tensor's (or module's) Gram matrix to its group and to the overall sum (key GLOBAL)."""
    gram = np.asarray(gram, dtype=np.float64)
    grams[group] = grams[group] + gram if group in grams else gram.copy()
    grams[GLOBAL] = grams[GLOBAL] + gram if GLOBAL in grams else gram.copy()


def cosines(grams: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cosine matrix for every group of a {group: Gram matrix} dict (as `add_gram` builds it)."""
    return {k: cosine_from_gram(g) for k, g in grams.items()}


def distances_from_gram(gram: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ||x_i - x_k||^2 from a Gram matrix."""
    d = np.diag(gram)
    return np.clip(d[:, None] + d[None, :] - 2 * gram, 0.0, None)
