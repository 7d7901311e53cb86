"""`local`: no federation; every client keeps exactly what it trained (W = identity)."""

from __future__ import annotations

import numpy as np

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy


class Local(Strategy):
    name = "local"
    summary = "no federation: each client keeps its own trained adapter"

    def mixing(self, stats: RoundStats) -> Mixing:
        return Mixing(np.eye(len(stats.clients)))
