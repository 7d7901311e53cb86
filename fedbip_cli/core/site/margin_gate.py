"""TAP's margin-gated replacement, as a pure decision on two losses.

A client replaces its personal adapter with the federated one only where that clearly helps:
loss(received) + margin < loss(personal), strictly. The first time (no personal adapter yet), the
personal adapter is seeded from the received one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Action = Literal["seed", "replace", "keep"]


@dataclass(frozen=True)
class Decision:
    task: str
    action: Action
    received_loss: float
    personal_loss: float | None
    margin: float

    def to_json(self) -> dict:
        return asdict(self)


def decide(task: str, received_loss: float, personal_loss: float | None, margin: float) -> Decision:
    """seed if there is no personal adapter; replace iff received + margin < personal; else keep."""
    if personal_loss is None:
        action: Action = "seed"
    elif received_loss + margin < personal_loss:
        action = "replace"
    else:
        action = "keep"
    return Decision(task, action, float(received_loss), None if personal_loss is None else float(personal_loss), margin)


def margin_for(task: str, default: float, per_task: dict[str, float]) -> float:
    """The margin of one task: its own if configured, else the default."""
    return per_task.get(task, default)
