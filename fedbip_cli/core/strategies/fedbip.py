"""`fedbip`: each client adds the similarity-weighted sum of the round's task vectors to its own start.

p_ik = S_ik / sum_j S_ij over the cosines of the whole task vectors (DESIGN §2); negative cosines
clamped to 0 by default; softmax / top-k / self-weight floor as options.
"""

from __future__ import annotations

import numpy as np

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.params import Param
from fedbip_cli.core.strategies.similarity import cosine_from_gram
from fedbip_cli.core.strategies.weights import NEGATIVE_RULES, similarity_weights

SIMILARITY_PARAMS = (
    Param("negative", "str", "clamp", "negative cosines: clamp to 0 (the paper's rule with conflicting clients given "
          "no weight) | softmax over all cosines", choices=NEGATIVE_RULES),
    Param("temperature", "float", 1.0, "softmax temperature (negative: softmax only)", minimum=0.0,
          exclusive_minimum=True),
    Param("top_k", "int", None, "keep only each client's k most similar others; null = all", minimum=1,
          optional=True),
    Param("self_floor", "float", 0.0, "minimum weight of a client's own task vector", minimum=0.0, maximum=1.0),
)
"""FedBip's weighting settings (core.strategies.weights.similarity_weights), shared by fedbip-layer and fedbip-tap."""


class FedBip(Strategy):
    name = "fedbip"
    summary = "similarity-weighted task vectors onto each client's own adapter (FedBip)"
    params = SIMILARITY_PARAMS
    negative: str
    temperature: float
    top_k: int | None
    self_floor: float

    def weights_from_gram(self, gram: np.ndarray) -> np.ndarray:
        return similarity_weights(cosine_from_gram(gram), negative=self.negative, temperature=self.temperature,
                                  top_k=self.top_k, self_floor=self.self_floor)

    def mixing(self, stats: RoundStats) -> Mixing:
        return Mixing(self.weights_from_gram(self.global_gram(stats)))
