"""Aggregation strategies, one small file each, behind `Strategy` and a name registry.

Attributes load on first use, so importing the catalogue of names (`registry.CATALOGUE`) costs no numpy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"Mixing": "base", "RoundStats": "base", "Strategy": "base", "Param": "params",
         "make_strategy": "registry", "strategy_class": "registry"}

__all__ = [*_LAZY, "STRATEGIES"]


def __getattr__(name: str) -> Any:
    if name == "STRATEGIES":
        return import_module(f"{__name__}.registry").all_strategies()
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
