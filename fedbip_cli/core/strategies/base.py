"""The interface every aggregation strategy implements.

A strategy looks at a round's statistics (Gram matrices of the task vectors, per module and overall;
optionally of the trained adapters; example counts) and returns a Mixing: K x K weights, global or per
module, and whether they mix task vectors onto each client's own start (FedBip) or mix the trained
adapters themselves (FedAvg, FedAMP). The engine in `core.engine.aggregate` applies it; strategies never
touch tensors, so each is a few lines and is tested on hand-made matrices.

A strategy also carries what the rest of fedbip needs to know about it, so no other module names
strategies: its settings (`params`, validated from fedbip.yaml's `aggregation:`), what a site does
with the adapter it receives before that adapter is judged (`after_receive`), the proximal pull a
site adds to its training loss (`site_proximal`), and where it deliberately differs from its
authors' reference implementation (`differs`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fedbip_cli.core.strategies.params import Param
from fedbip_cli.errors import UserError

if TYPE_CHECKING:
    import numpy as np

Mode = Literal["update", "model"]
"""update: mix task vectors onto each client's own start (FedBip); model: mix the trained adapters (FedAvg).
(Not to be confused with the delta *space*, `core.files.taskvec.SPACES`: a Mixing works in either space.)"""
MODES = ("update", "model")
AfterReceive = Literal["evaluate", "finetune", "tap"]
AFTER_RECEIVE: dict[str, str] = {
    "evaluate": "uses the received adapter as it is",
    "finetune": "fine-tunes the received adapter on its own data before using it",
    "tap": "runs TAP: keeps a personal adapter, replaced by the received one only where that lowers its loss "
           "(margin gate); distils after the last round",
}
"""What a site does with the adapter it receives, before it is evaluated (simulate) or used."""


@dataclass
class RoundStats:
    """What a strategy may look at. Index k of every array is `clients[k]`."""

    clients: list[str]
    num_examples: np.ndarray
    task_grams: dict[str, np.ndarray]
    """Gram matrices of the task vectors: key GLOBAL for the concatenation, else one per module."""
    model_grams: dict[str, np.ndarray] | None = None
    """Gram matrices of the trained adapters (start + tau), for strategies that declare needs_model_gram."""


@dataclass
class Mixing:
    """K x K weights W (row i: what client i receives).

    mode "update": new_i = start_i + sum_k W_ik tau_k.   mode "model": new_i = sum_k W_ik (start_k + tau_k).
    `per_module` overrides `matrix` for the modules it names (FedBip-L).
    """

    matrix: np.ndarray
    mode: Mode = "update"
    per_module: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Mixing mode must be one of {MODES}, got {self.mode!r}")

    def for_module(self, module: str) -> np.ndarray:
        return self.per_module.get(module, self.matrix)


class Strategy(ABC):
    """Base class: subclasses set `name`, `summary`, their `params`, and implement `mixing`.

    The constructor takes exactly the declared params as keywords (checked, defaults filled in) and
    sets each as an attribute; an option the strategy does not declare is a UserError.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    after_receive: ClassVar[AfterReceive] = "evaluate"
    needs_model_gram: ClassVar[bool] = False
    differs: ClassVar[str] = ""
    """Where fedbip deliberately differs from the method's reference implementation ('' = it does not)."""

    def __init__(self, **options: Any) -> None:
        declared = {p.name: p for p in self.params}
        for key in options:
            if key not in declared:
                raise UserError(f"strategy {self.name}: unknown setting {key!r} "
                                f"(its settings: {', '.join(declared) or 'none'})")
        for p in self.params:
            setattr(self, p.name, p.check(options.get(p.name, p.default), f"strategy {self.name}: {p.name}"))

    @abstractmethod
    def mixing(self, stats: RoundStats) -> Mixing:
        """The weights for this round."""

    def options(self) -> dict:
        """The settings this instance runs with, recorded in weights.json."""
        return {p.name: getattr(self, p.name) for p in self.params}

    def site_proximal(self) -> float:
        """mu of the term (mu / 2) * ||theta - start||^2 a site adds to its training loss (0: none)."""
        return 0.0

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """JSON-ready description, as `fedbip strategies --json` prints it."""
        return {"summary": cls.summary, "after_receive": cls.after_receive,
                "params": [p.describe() for p in cls.params], "differs_from_reference": cls.differs}

    @staticmethod
    def global_gram(stats: RoundStats) -> np.ndarray:
        # lazy: numpy; `fedbip strategies` reads the classes without it
        from fedbip_cli.core.strategies.similarity import GLOBAL

        return stats.task_grams[GLOBAL]
