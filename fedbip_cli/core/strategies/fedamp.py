"""`fedamp`: attention weights over the trained adapters themselves (FedAMP, as PFLlib's server does).

xi_ik = alpha_k * exp(-||theta_i - theta_k||^2 / sigma) for k != i, xi_ii = 1 - sum of the others;
client i receives sum_k xi_ik theta_k. PFLlib also divides by sigma; that factor is folded into
alpha_k here so the weights do not depend on the units of theta. Defaults: sigma = the median
off-diagonal squared distance of the round, alpha_k = 1 / K (so the self weight stays positive).
"""

from __future__ import annotations

import numpy as np

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.similarity import GLOBAL, distances_from_gram


class FedAMP(Strategy):
    name = "fedamp"
    needs_model_gram = True
    summary = "attention over distances between trained adapters (FedAMP)"

    def __init__(self, sigma: float | None = None, alpha_k: float | None = None) -> None:
        self.sigma, self.alpha_k = sigma, alpha_k

    def mixing(self, stats: RoundStats) -> Mixing:
        assert stats.model_grams is not None, "fedamp needs the trained adapters' Gram matrix"
        dist = distances_from_gram(stats.model_grams[GLOBAL])
        k = dist.shape[0]
        off = dist[~np.eye(k, dtype=bool)]
        sigma = self.sigma or (float(np.median(off)) if off.size and np.median(off) > 0 else 1.0)
        alpha = self.alpha_k if self.alpha_k is not None else 1.0 / k
        w = alpha * np.exp(-dist / sigma)
        np.fill_diagonal(w, 0.0)
        total = w.sum(axis=1)
        over = total > 1.0
        w[over] /= total[over][:, None]
        np.fill_diagonal(w, 1.0 - w.sum(axis=1))
        return Mixing(w, mode="model")
