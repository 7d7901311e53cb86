"""`fedbip`: each client adds the similarity-weighted sum of the round's task vectors to its own start.

p_ik = S_ik / sum_j S_ij over the cosines of the whole task vectors (DESIGN §2); negative cosines
clamped to 0 by default; softmax / top-k / self-weight floor as options.
"""

from __future__ import annotations

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.similarity import cosine_from_gram
from fedbip_cli.core.strategies.weights import similarity_weights


class FedBip(Strategy):
    name = "fedbip"
    summary = "similarity-weighted task vectors onto each client's own adapter (FedBip)"

    def __init__(self, negative: str = "clamp", temperature: float = 1.0, top_k: int | None = None,
                 self_floor: float = 0.0) -> None:
        self.negative, self.temperature, self.top_k, self.self_floor = negative, temperature, top_k, self_floor

    def weights_from_gram(self, gram):
        return similarity_weights(cosine_from_gram(gram), negative=self.negative, temperature=self.temperature,
                                  top_k=self.top_k, self_floor=self.self_floor)

    def mixing(self, stats: RoundStats) -> Mixing:
        return Mixing(self.weights_from_gram(self.global_gram(stats)))
