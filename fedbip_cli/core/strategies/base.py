"""The interface every aggregation strategy implements.

A strategy looks at a round's statistics (Gram matrices of the task vectors, per module and overall;
optionally of the trained adapters; example counts) and returns a Mixing: K x K weights, global or per
module, and whether they mix task vectors onto each client's own start (FedBip) or mix the trained
adapters themselves (FedAvg, FedAMP). The engine in `core.engine.aggregate` applies it; strategies never
touch tensors, so each is a few lines and is tested on hand-made matrices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from fedbip_cli.core.strategies.similarity import GLOBAL

Mode = Literal["update", "model"]
"""update: mix task vectors onto each client's own start (FedBip); model: mix the trained adapters (FedAvg).
(Not to be confused with the delta *space*, `core.files.taskvec.SPACES`: a Mixing works in either space.)"""
MODES = ("update", "model")


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
    """Base class: subclasses set `name` and implement `mixing`."""

    name: ClassVar[str]
    needs_model_gram: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    @abstractmethod
    def mixing(self, stats: RoundStats) -> Mixing:
        """The weights for this round."""

    def options(self) -> dict:
        """The settings this instance runs with, recorded in weights.json."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @staticmethod
    def global_gram(stats: RoundStats) -> np.ndarray:
        return stats.task_grams[GLOBAL]
