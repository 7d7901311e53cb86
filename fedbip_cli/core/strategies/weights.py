"""Turning a similarity matrix into aggregation weights (rows non-negative, summing to 1)."""

from __future__ import annotations

import numpy as np

NEGATIVE_RULES = ("clamp", "softmax")


def similarity_weights(sim: np.ndarray, *, negative: str = "clamp", temperature: float = 1.0,
                       top_k: int | None = None, self_floor: float = 0.0) -> np.ndarray:
    """FedBip weights p_ik from cosines S_ik (DESIGN §2, step 5).

    negative="clamp" (default): p_ik = max(S_ik, 0) / sum_j max(S_ij, 0), the paper's rule with
    negative cosines (conflicting clients) given no weight. negative="softmax": p_ik ∝ exp(S_ik / T).
    top_k keeps each client's own entry plus its k most similar others. self_floor raises a client's
    own weight to at least that value, scaling the others down to keep the row sum at 1.
    """
    sim = np.asarray(sim, dtype=np.float64)
    k = sim.shape[0]
    if negative == "clamp":
        raw = np.clip(sim, 0.0, None)
    elif negative == "softmax":
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        z = sim / temperature
        raw = np.exp(z - z.max(axis=1, keepdims=True))
    else:
        raise ValueError(f"negative must be one of {NEGATIVE_RULES}, got {negative!r}")
    np.fill_diagonal(raw, np.maximum(np.diag(raw), 1e-12))
    if top_k is not None and top_k < k - 1:
        keep = np.zeros_like(raw, dtype=bool)
        for i in range(k):
            others = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:top_k]
            keep[i, others] = True
            keep[i, i] = True
        raw = np.where(keep, raw, 0.0)
    weights = raw / raw.sum(axis=1, keepdims=True)
    if self_floor > 0:
        weights = apply_self_floor(weights, self_floor)
    return weights


def apply_self_floor(weights: np.ndarray, floor: float) -> np.ndarray:
    """Raise each diagonal entry to at least `floor`, rescaling the row's other entries."""
    out = weights.copy()
    for i in range(out.shape[0]):
        if out[i, i] < floor:
            others = out[i].sum() - out[i, i]
            out[i] *= (1.0 - floor) / others if others > 0 else 0.0
            out[i, i] = floor if others > 0 else 1.0
    return out


def example_weights(num_examples: np.ndarray) -> np.ndarray:
    """n_k / sum n: the FedAvg weights of a round's clients."""
    n = np.asarray(num_examples, dtype=np.float64)
    return n / n.sum()
