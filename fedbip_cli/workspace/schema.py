"""How a config key is declared, converted and checked: one declaration per key, beside its field.

Each field of the config dataclasses is made with `key(default, help, ...)`: its type is the annotation,
its default, range or choices and help live in the field's metadata. From these one walker converts a
parsed YAML value (`convert`), one validator checks every key of a section (`check_fields`), and the
commented template (`template.py`) is printed, so a key cannot be documented, defaulted and checked in
three different places.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Union

from fedbip_cli.errors import UserError

INT_LIMIT = 2 ** 63
"""Integers are bounded to what numpy and torch hold (|value| < 2**63)."""


@dataclass(frozen=True)
class Bounds:
    """An interval for a number: lower and upper bound, each open or closed, either absent."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def text(self) -> str:
        """The rule in words: `> 0`, `>= 0`, `in [0, 1)`."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class KeyInfo:
    """What a field's metadata says of its key (the part beyond its type and default)."""

    help: str
    bounds: Bounds | None = None
    choices: Callable[[], Sequence[str]] | None = None
    """Allowed strings, looked up when checked (registries are read lazily, off the start-up path)."""
    allow_empty: bool = False
    """Strings and lists must be non-empty unless this is set."""
    unique: bool = False
    """List items must be distinct."""
    template: bool = True
    """Whether the commented template prints this key."""


def key(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
        gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None,
        choices: Callable[[], Sequence[str]] | None = None, allow_empty: bool = False, unique: bool = False,
        template: bool = True) -> Any:
    """A dataclass field declaring one config key: default (or `factory`; neither = required), help
    (the template's comment), bounds for numbers (gt / ge / lt / le) and choices for strings."""
    bounds = None
    if any(b is not None for b in (gt, ge, lt, le)):
        bounds = Bounds(low=gt if gt is not None else ge, low_open=gt is not None,
                        high=lt if lt is not None else le, high_open=lt is not None)
    meta = {"key": KeyInfo(help=help, bounds=bounds, choices=choices, allow_empty=allow_empty, unique=unique,
                           template=template)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def info(f: dataclasses.Field) -> KeyInfo:
    """The declaration of a field (a bare field declares nothing beyond its type)."""
    return f.metadata.get("key") or KeyInfo(help="")


def printable(key: Any, limit: int = 80) -> str:
    """A key (or message) from the YAML as it may appear in a one-line error: escaped, shortened."""
    text = str(key).encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OutOfRange(UserError):
    """A value of the right type but outside what any type of a union could hold (NaN, overflow)."""


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: str, source: str, build: Callable[[type, Any, str], Any]) -> Any:
    """`value` as type `tp`, or UserError naming `source` and the key `path`; `build(cls, raw, path)` makes
    nested sections (dataclasses)."""
    origin = typing.get_origin(tp)
    where = f"{source}: {path}"
    bad = UserError(f"{where}: expected {type_name(tp)}, got {printable(repr(value), 120)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, path, source, build)
            except OutOfRange:
                raise
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [convert(v, item, f"{path}[{i}]", source, build) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): convert(v, item, f"{path}.{printable(k)}", source, build) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise OutOfRange(f"{where}: {value} is out of range (|value| < 2**63)")
            return value
        raise bad
    if tp is float:
        return _to_float(value, where, bad)
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _to_float(value: Any, where: str, bad: UserError) -> float:
    number: Any = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)  # PyYAML reads 5e-4 (no dot) as a string
        except ValueError:
            pass
    if number is None:
        raise bad
    try:
        number = float(number)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):  # .nan, .inf or an integer too large for a float
        raise OutOfRange(f"{where}: must be a finite number, got {printable(repr(value))}")
    return number


def check_value(value: Any, meta: KeyInfo, where: str) -> None:
    """One converted value against its declaration: bounds, choices, non-empty, distinct items."""
    if value is None:
        return
    if meta.bounds is not None:
        numbers = value.values() if isinstance(value, dict) else [value]
        for number in numbers:
            if not meta.bounds.holds(number):
                raise UserError(f"{where}: must be {meta.bounds.text()}, got {number!r}")
    if meta.choices is not None and value not in meta.choices():
        raise UserError(f"{where}: must be one of {', '.join(meta.choices())}, got {printable(repr(value))}")
    if isinstance(value, (str, list)) and not meta.allow_empty:
        if len(value) == 0:
            raise UserError(f"{where}: must not be empty")
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str) and not item:
                    raise UserError(f"{where}[{i}]: must not be empty")
    if meta.unique and isinstance(value, list) and len(set(value)) != len(value):
        twice = sorted({v for v in value if value.count(v) > 1})
        raise UserError(f"{where}: lists {printable(', '.join(map(str, twice)))} more than once")


def check_fields(section: Any, path: str, source: str) -> None:
    """Every declared key of one section (a dataclass instance at key path `path`) within its declaration."""
    for f in dataclasses.fields(section):
        check_value(getattr(section, f.name), info(f), f"{source}: {path}.{f.name}")
