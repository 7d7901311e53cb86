"""Standard PEFT metadata on every adapter fedbip writes, without importing peft.

A serving stack finds the base model through `base_model_name_or_path` and picks its PEFT model class
through `task_type`; fedbip's own model class must never leak in as `auto_mapping` (it would point
loaders at fedbip_cli), and no path of the writing machine may leave it.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """`org/name` as on the Hugging Face hub (not a path: no leading / . ~ or drive letter)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def is_machine_path(value: Any) -> bool:
    """An absolute path of the machine that wrote it (POSIX, Windows drive or UNC, home-relative)."""
    if not isinstance(value, str) or not value:
        return False
    return value.startswith(("/", "~", "\\\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def portable_base_name(value: Any, fallback: str) -> str:
    """`value` if it names a base model without a path of this machine, else `fallback`."""
    if isinstance(value, str) and value and not is_machine_path(value):
        return value
    return fallback


def hub_id_from_cache_path(path: str) -> str | None:
    """`org/name` for a folder inside a Hugging Face cache (`.../models--org--name/snapshots/<rev>`)."""
    parts = PurePath(path).parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            name = part[len("models--"):].replace("--", "/")
            return name if looks_like_hub_id(name) else None
    return None


def standard_config(config: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy of an adapter config with fedbip's metadata made standard: `metadata` (the base model's
    portable name, the peft task type, ...) laid over it, and no auto_mapping into fedbip_cli."""
    doc = dict(config) | dict(metadata)
    if is_machine_path(doc.get("base_model_name_or_path")):
        raise ValueError("base_model_name_or_path must be a portable name, not a path of this machine")
    mapping = doc.get("auto_mapping")
    if isinstance(mapping, dict) and str(mapping.get("parent_library", "")).startswith("fedbip_cli"):
        doc["auto_mapping"] = None
    return doc
