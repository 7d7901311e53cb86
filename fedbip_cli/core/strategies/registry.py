"""Name -> strategy class. `CATALOGUE` names every strategy and where its class lives, without importing
it (numpy), so `fedbip --help` can list the names cheaply; `STRATEGIES` imports them on first use."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

from fedbip_cli.errors import UserError

if TYPE_CHECKING:
    from fedbip_cli.core.strategies.base import Strategy

_PACKAGE = "fedbip_cli.core.strategies"
CATALOGUE: dict[str, str] = {
    "local": "local:Local",
    "fedavg": "fedavg:FedAvg",
    "fedavg-ft": "fedavg:FedAvgFineTuned",
    "fedamp": "fedamp:FedAMP",
    "fedbip": "fedbip:FedBip",
    "fedbip-layer": "fedbip_layer:FedBipLayer",
    "tap": "tap_variants:Tap",
    "fedbip-tap": "tap_variants:FedBipTap",
}
"""Every strategy, in the order `fedbip strategies` lists them: baselines first, then FedBip, then TAP."""


@cache
def all_strategies() -> dict[str, type[Strategy]]:
    """Name -> class, importing each module once; checks that every class carries its catalogue name."""
    out: dict[str, type[Strategy]] = {}
    for name, where in CATALOGUE.items():
        module, cls_name = where.split(":")
        cls = getattr(import_module(f"{_PACKAGE}.{module}"), cls_name)
        assert cls.name == name, f"{where} is named {cls.name!r}, catalogued as {name!r}"
        out[name] = cls
    return out


def strategy_class(name: str) -> type[Strategy]:
    """The class of strategy `name`; UserError naming the choices when there is none."""
    if name not in CATALOGUE:
        raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(CATALOGUE)}")
    return all_strategies()[name]


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build strategy `name` with `options`, each checked against its declared params (an undeclared one is
    a UserError: nothing is dropped silently)."""
    return strategy_class(name)(**options)


@cache
def declared_params() -> dict[str, Any]:
    """Setting name -> its Param, over every strategy (the keys fedbip.yaml's `aggregation:` may hold).

    Strategies that share a setting share its declaration (fedbip, fedbip-layer, fedbip-tap)."""
    out: dict[str, Any] = {}
    for name, cls in all_strategies().items():
        for p in cls.params:
            assert out.setdefault(p.name, p) == p, f"{name} declares {p.name!r} unlike another strategy"
    return out
