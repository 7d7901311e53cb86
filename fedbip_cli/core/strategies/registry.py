"""Name -> strategy class; `make_strategy` builds one from config options it understands."""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import UserError
from .base import Strategy
from .fedamp import FedAMP
from .fedavg import FedAvg
from .fedbip import FedBip
from .fedbip_layer import FedBipLayer
from .local import Local

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedBip, FedBipLayer, FedAvg, Local, FedAMP)}


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy `name`, passing only the options its constructor accepts."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UserError(f"unknown strategy {name!r}: choose one of {', '.join(sorted(STRATEGIES))}")
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
