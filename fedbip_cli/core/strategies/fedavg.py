"""`fedavg` (FedIT for LoRA): every client receives the example-weighted mean of the trained adapters.

`fedavg-ft` is the same aggregation; each site then fine-tunes the global adapter on its own data
before using it (the usual "FedAvg + local fine-tuning" personalization baseline).
"""

from __future__ import annotations

import numpy as np

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.weights import example_weights


class FedAvg(Strategy):
    name = "fedavg"
    summary = "example-weighted mean of the trained adapters, the same for every client (FedIT)"

    def mixing(self, stats: RoundStats) -> Mixing:
        row = example_weights(stats.num_examples)
        return Mixing(np.tile(row, (len(row), 1)), mode="model")


class FedAvgFineTuned(FedAvg):
    name = "fedavg-ft"
    summary = "fedavg, then each client fine-tunes the global adapter on its own data before using it"
    after_receive = "finetune"
