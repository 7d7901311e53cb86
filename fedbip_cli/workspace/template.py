"""The commented fedbip.yaml that `fedbip init` writes, printed from the schema's own declarations.

Every key, its default and its comment come from `config.py` (`schema.key`), and the strategy settings
from the strategies' `Param`s, so the template cannot drift from what the loader accepts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from typing import Any

from fedbip_cli.core.strategies.registry import all_strategies, declared_params
from fedbip_cli.workspace.config import SECTIONS, ClientConfig, Config, override, parse_config, validate
from fedbip_cli.workspace.schema import info

COMMENT_COLUMN = 30
WIDTH = 118

HEADER = """\
# fedbip federation config. Paths are relative to this folder.
# Every command reads it; flags such as --set training.epochs=2 override single values.
"""


def yaml_value(value: Any) -> str:
    """A value as a YAML flow scalar that PyYAML reads back to the same value (floats keep a dot)."""
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value) and value not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)


def _float_text(x: float) -> str:
    """5.0e-4 rather than 0.0005 for small and large numbers; always a dot in the mantissa, since PyYAML
    reads 5e-4 as a string."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return repr(x)
    mantissa, exponent = f"{x:.15e}".split("e")
    mantissa = mantissa.rstrip("0")
    text = f"{mantissa}{'0' if mantissa.endswith('.') else ''}e{int(exponent):+d}"  # PyYAML needs the sign
    return text if float(text) == x else repr(x)


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
"""Strings YAML reads back unchanged without quotes (besides the words below)."""
_YAML_WORDS = {"null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "yes", "Yes", "YES",
               "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N"}


def key_lines(name: str, value: Any, comment: str, indent: str = "  ") -> list[str]:
    """`name: value  # comment`, the comment aligned and wrapped onto further comment lines."""
    return annotated(f"{indent}{name}: {yaml_value(value)}", comment, indent)


def annotated(head: str, comment: str, indent: str) -> list[str]:
    """`head` with `comment` at the comment column (wrapped), or above it when `head` is long."""
    if not comment:
        return [head]
    if len(head) >= COMMENT_COLUMN + 8:
        return [f"{indent}# {part}" for part in textwrap.wrap(comment, WIDTH - len(indent) - 2)] + [head]
    column = max(COMMENT_COLUMN, len(head) + 1)
    parts = textwrap.wrap(comment, WIDTH - column - 2) or [""]
    return [f"{head.ljust(column)}# {parts[0]}"] + [f"{' ' * column}# {part}" for part in parts[1:]]


def section_lines(name: str, section: Any) -> list[str]:
    doc = " ".join((type(section).__doc__ or "").split())
    lines = annotated(f"{name}:", doc, "")
    for f in dataclasses.fields(section):
        meta = info(f)
        if meta.template:
            lines += key_lines(f.name, getattr(section, f.name), meta.help)
    if name == "aggregation":
        lines += strategy_settings(section.settings)
    return lines


def strategy_settings(values: dict[str, Any]) -> list[str]:
    """The `aggregation:` lines of every strategy setting, with its value and help, from the strategies' own
    declarations (core.strategies), so the template never lists a setting no strategy reads."""

    lines = ["  # strategy settings, each read by the strategies named in its comment (`fedbip strategies`):"]
    for name, p in declared_params().items():
        owners = [n for n, cls in all_strategies().items() if p in cls.params]
        lines += key_lines(name, values.get(name, p.default), f"{', '.join(owners)}: {p.help}")
    return lines


def clients_lines(clients: dict[str, ClientConfig]) -> list[str]:
    if not clients:
        example = ", ".join(f"{f.name}: ..." for f in dataclasses.fields(ClientConfig)[:3])
        return ["clients: {}".ljust(COMMENT_COLUMN) + f"# one entry per site: name: {{{example}}}"]
    lines = ["clients:"]
    for site, cc in clients.items():
        lines.append(f"  {site}:")
        for f in dataclasses.fields(cc):
            value = getattr(cc, f.name)
            if value is not None:
                lines.append(f"    {f.name}: {yaml_value(value)}")
    return lines


def render(model_path: str | None = None, labels: list[str] | None = None, clients: dict[str, dict] | None = None,
           settings: dict[str, Any] | None = None) -> str:
    """The commented template for a config with these values (others at their defaults); `settings` sets
    further keys by path ({"training.epochs": 2}) to typed values, each converted and checked as `--set`
    would (strings as they are, not read as YAML again)."""

    cfg = Config()
    cfg.model.path = model_path
    cfg.task.labels = list(labels) if labels is not None else None
    if clients:
        cfg.clients = parse_config({"clients": clients}, "fedbip init").clients
    for dotted, value in (settings or {}).items():
        override(cfg, dotted, value, "fedbip init", parse=False)
    validate(cfg, "fedbip init")
    return render_config(cfg)


def render_config(cfg: Config) -> str:
    """`cfg` as commented YAML: every key with its help (strategy settings with their owners)."""
    lines = [HEADER]
    for name in SECTIONS:
        lines += section_lines(name, getattr(cfg, name))
        lines.append("")
    lines += clients_lines(cfg.clients)
    return "\n".join(lines) + "\n"
