"""Aggregation strategies, one small file each, behind `Strategy` and a name registry."""

from .base import Mixing, RoundStats, Strategy
from .registry import STRATEGIES, make_strategy

__all__ = ["Mixing", "RoundStats", "Strategy", "STRATEGIES", "make_strategy"]
