"""`fedamp`: attentive message passing over the trained adapters (FedAMP, Huang et al., AAAI 2021), as
PFLlib's server (serveramp.py) and client (clientamp.py) compute it.

Server, for each client i of the round, with d_ik = ||theta_i - theta_k||^2 over the trained adapters:
    xi_ik = alpha_K * e(d_ik),  e(x) = exp(-x / sigma) / sigma      (k != i)
    xi_ii = 1 - sum_{k != i} xi_ik                                    (not renormalised; may be negative)
    u_i   = sum_k xi_ik theta_k                                       (client i's start of the next round)
Client: trains with the proximal term lambda / (2 alpha_K) * ||theta - u_i||^2 (the paper's Eq. 6),
pulling towards u_i, its start adapter (`site_proximal`).

Where fedbip deliberately differs (see `differs`, shown by `fedbip strategies`):
- defaults: PFLlib's sigma = 1 and alpha_K = 1 are in the units of its models' weights; on the
  demo's round-0 LoRA adapters (squared distances 1.0 to 1.9) they give self weights of -0.4 to -0.7
  (docs/pipeline.md). fedbip's defaults (sigma, alpha_K null) take sigma = the round's median
  off-diagonal d_ik and alpha_K = sigma / K, so each other client gets at most 1/K and the self
  weight stays at least 1/K. Setting both gives PFLlib's formula with those values.
- the client term: PFLlib's clientamp.py adds 0.5 * lambda / alpha_K * ||theta - u||_2 on detached
  tensors (`.data`), so it changes no gradient; fedbip applies the paper's squared term with its
  gradient. With alpha_K null (its value is the round's, unknown at the site) the site uses alpha_K = 1.
- the client starts its training from u_i (fedbip's start adapter) where PFLlib continues from its own
  previous model.
"""

from __future__ import annotations

import numpy as np

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.params import Param
from fedbip_cli.core.strategies.similarity import GLOBAL, distances_from_gram


class FedAMP(Strategy):
    name = "fedamp"
    summary = "attention over distances between trained adapters, proximal pull at the client (FedAMP, PFLlib)"
    needs_model_gram = True
    params = (
        Param("sigma", "float", None, "sigma of e(x) = exp(-x/sigma)/sigma over squared adapter distances; "
              "null = the round's median distance (PFLlib: 1.0)", minimum=0.0, exclusive_minimum=True, optional=True),
        Param("alpha_k", "float", None, "alpha_K: server step, xi_ik = alpha_K e(d_ik); null = sigma / clients "
              "(PFLlib: 1.0)", minimum=0.0, exclusive_minimum=True, optional=True),
        Param("lamda", "float", 1.0, "lambda of the client's proximal term lambda/(2 alpha_K) ||theta - u_i||^2 "
              "(PFLlib's --lamda; 0 = none)", minimum=0.0),
    )
    differs = ("defaults sigma = the round's median squared distance and alpha_K = sigma / K (PFLlib: 1 and 1, "
               "in its models' units; on LoRA adapters they can give negative self weights); the client's proximal "
               "term is the paper's squared one with its gradient (PFLlib's is detached), with alpha_K = 1 at the "
               "site when alpha_k is null; the client trains from u_i, not from its previous model")
    sigma: float | None
    alpha_k: float | None
    lamda: float

    def mixing(self, stats: RoundStats) -> Mixing:
        assert stats.model_grams is not None, "fedamp needs the trained adapters' Gram matrix"
        dist = distances_from_gram(stats.model_grams[GLOBAL])
        k = dist.shape[0]
        sigma = self.sigma if self.sigma is not None else median_distance(dist)
        alpha = self.alpha_k if self.alpha_k is not None else sigma / k
        xi = alpha * np.exp(-dist / sigma) / sigma
        np.fill_diagonal(xi, 0.0)
        np.fill_diagonal(xi, 1.0 - xi.sum(axis=1))
        return Mixing(xi, mode="model")

    def site_proximal(self) -> float:
        return self.lamda / (self.alpha_k if self.alpha_k is not None else 1.0)


def median_distance(dist: np.ndarray) -> float:
    """The median off-diagonal squared distance of the round; 1.0 when there is none or it is 0."""
    off = dist[~np.eye(dist.shape[0], dtype=bool)]
    med = float(np.median(off)) if off.size else 0.0
    return med if med > 0 else 1.0
