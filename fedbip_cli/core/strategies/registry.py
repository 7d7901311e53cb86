"""Name -> strategy class; `make_strategy` builds one from config options it understands."""

from __future__ import annotations

import inspect
from typing import Any

from fedbip_cli.core.strategies.base import Strategy
from fedbip_cli.core.strategies.fedamp import FedAMP
from fedbip_cli.core.strategies.fedavg import FedAvg
from fedbip_cli.core.strategies.fedbip import FedBip
from fedbip_cli.core.strategies.fedbip_layer import FedBipLayer
from fedbip_cli.core.strategies.local import Local
from fedbip_cli.errors import UserError

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedBip, FedBipLayer, FedAvg, Local, FedAMP)}


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy `name`, passing only the options its constructor accepts."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(sorted(STRATEGIES))}")
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
