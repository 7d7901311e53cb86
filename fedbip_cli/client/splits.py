"""Per-task views of a data split: every task type's split is a dataclass of index-aligned lists."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, TypeVar

T = TypeVar("T", bound="PerTask")


def select(items: Sequence[Any] | None, idx: Sequence[int]) -> list[Any] | None:
    """items[idx] for a list that may be absent."""
    return None if items is None else [items[i] for i in idx]


def task_indices(tasks: list[str] | None, n: int, task: str) -> list[int]:
    """Indices of the examples of one task (all of them for data without a task field)."""
    return list(range(n)) if not tasks else [i for i, t in enumerate(tasks) if t == task]


class PerTask:
    """Mixin for split dataclasses whose fields are lists aligned by example, `tasks` among them."""

    tasks: list[str] | None

    def task_names(self) -> list[str]:
        """The tasks present, sorted; ["default"] for data without a task field."""
        return sorted(set(self.tasks)) if self.tasks else ["default"]

    def __len__(self) -> int:
        raise NotImplementedError  # each split dataclass counts its examples

    def for_task(self: T, task: str) -> T:
        """The examples of one task (all of them for data without a task field)."""
        if not self.tasks:
            return self
        idx = task_indices(self.tasks, len(self), task)
        data: Any = self  # every subclass is a dataclass, which the mixin itself cannot declare
        return dataclasses.replace(data, **{f.name: select(getattr(self, f.name), idx)
                                            for f in dataclasses.fields(data)})
