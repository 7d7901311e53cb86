"""Aggregation strategies, one small file each, behind `Strategy` and a name registry."""

from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.core.strategies.registry import STRATEGIES, make_strategy

__all__ = ["Mixing", "RoundStats", "Strategy", "STRATEGIES", "make_strategy"]
