"""Norm clipping against poisoned task vectors, relative to the round's median norm.

A client that scales its task vector up (x100) keeps its cosine, so similarity weighting alone would
let it move its neighbours 100 times as far. Clipping every vector to at most `factor` x the round's
median norm bounds that, and leaves honest vectors of ordinary size untouched. Sign-flipped and
random vectors are handled by the weighting itself (negative or near-zero cosine: no or little weight).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def clip_scales(norms: np.ndarray, factor: float | None) -> np.ndarray:
    """Per-client multipliers min(1, factor * median / norm); all ones when factor is None or 0."""
    norms = np.asarray(norms, dtype=np.float64)
    if not factor:
        return np.ones_like(norms)
    bound = factor * float(np.median(norms))
    with np.errstate(divide="ignore"):
        return np.where(norms > bound, bound / np.where(norms > 0, norms, 1.0), 1.0)


def scale_grams(grams: Mapping[str, np.ndarray], scales: np.ndarray) -> dict[str, np.ndarray]:
    """Gram matrices of the scaled vectors: diag(c) G diag(c)."""
    outer = np.outer(scales, scales)
    return {k: g * outer for k, g in grams.items()}
