"""A strategy's declared settings: name, type, default, range and help, checked where they are read.

Each strategy lists its `Param`s; fedbip.yaml's `aggregation:` keys, `--set aggregation.KEY=...`,
`make_strategy(name, **options)` and `fedbip strategies` all go through the same declarations, so a
strategy's settings are documented and validated in one place. Pure python (no numpy), so the CLI can
list them without paying for numpy at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedbip_cli.errors import UserError


@dataclass(frozen=True)
class Param:
    """One setting. `type` is "float", "int" or "str"; `optional`: null is allowed (its meaning in `help`)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        """`value` converted to this parameter's type, or UserError naming `where` and the value."""
        if value is None:
            if self.optional:
                return None
            raise UserError(f"{where}: must be set (null is not allowed), got null")
        value = self._convert(value, where)
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{where}: must be one of {', '.join(self.choices)}, got {value!r}")
        low_bad = self.minimum is not None and (value <= self.minimum if self.exclusive_minimum
                                                else value < self.minimum)
        if low_bad or (self.maximum is not None and value > self.maximum):
            raise UserError(f"{where}: must be in {self.range_text()}, got {value!r}")
        return value

    def _convert(self, value: Any, where: str) -> Any:
        bad = UserError(f"{where}: expected {self.type}{' or null' if self.optional else ''}, got {value!r}")
        if isinstance(value, bool):
            raise bad
        if self.type == "str":
            if isinstance(value, str):
                return value
            raise bad
        if self.type == "int":
            if isinstance(value, int):
                return value
            raise bad
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads 5e-4 as a string
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):  # NaN or infinity would pass every range test or poison the weights
            raise UserError(f"{where}: must be a finite number, got {value!r}")
        return number

    def range_text(self) -> str:
        """The allowed values in words, e.g. `(0, inf)` or `clamp | softmax`."""
        if self.choices is not None:
            return " | ".join(self.choices)
        if self.minimum is None and self.maximum is None:
            return "any"
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        opening = "(" if self.exclusive_minimum or self.minimum is None else "["
        closing = "]" if self.maximum is not None else ")"
        return f"{opening}{low}, {high}{closing}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, as `fedbip strategies --json` prints it."""
        return {"name": self.name, "type": self.type, "default": self.default, "optional": self.optional,
                "range": self.range_text(), "help": self.help}
