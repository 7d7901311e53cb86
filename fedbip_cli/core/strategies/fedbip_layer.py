"""`fedbip-layer` (FedBip-L): FedBip's weighting done per module, each with its own K x K matrix."""

from __future__ import annotations

from fedbip_cli.core.strategies.base import Mixing, RoundStats
from fedbip_cli.core.strategies.fedbip import FedBip
from fedbip_cli.core.strategies.similarity import GLOBAL


class FedBipLayer(FedBip):
    name = "fedbip-layer"
    summary = "FedBip with a separate similarity and weight matrix per module (FedBip-L)"

    def mixing(self, stats: RoundStats) -> Mixing:
        per_module = {m: self.weights_from_gram(g) for m, g in stats.task_grams.items() if m != GLOBAL}
        return Mixing(self.weights_from_gram(self.global_gram(stats)), per_module=per_module)
