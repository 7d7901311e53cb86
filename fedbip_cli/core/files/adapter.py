"""PEFT LoRA adapter folders read and written without importing peft.

A folder holds `adapter_config.json` and `adapter_model.safetensors`. The coordinator only needs the
tensor names, the LoRA scale of each module and a way to write a folder that
`PeftModel.from_pretrained` loads: the same config with new tensors.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.atomic import atomic_dir
from fedbip_cli.core.files.regular import read_regular
from fedbip_cli.errors import UserError

CONFIG_FILE = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20
"""An adapter_config.json is a few hundred bytes; anything above this is refused unread."""
MAX_RANK = 1 << 16
WEIGHTS_FILE = "adapter_model.safetensors"
_LORA_SUFFIX = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>[AB])\.weight$")


def module_of(name: str) -> str:
    """The module a tensor belongs to: `x.lora_A.weight` -> `x`, `head.weight` -> `head`."""
    m = _LORA_SUFFIX.match(name)
    if m:
        return m.group("module")
    return name.rsplit(".", 1)[0] if "." in name else name


def lora_kind(name: str) -> str | None:
    """'A' or 'B' for LoRA factors, None for dense tensors (classification heads, modules_to_save)."""
    m = _LORA_SUFFIX.match(name)
    return m.group("kind") if m else None


def lora_name(module: str, kind: str) -> str:
    """The PEFT tensor name of a module's LoRA factor: ('x', 'A') -> 'x.lora_A.weight'."""
    return f"{module}.lora_{kind}.weight"


def lora_modules(names: Iterable[str]) -> list[str]:
    """Sorted modules that have both LoRA factors among `names`."""
    names = set(names)
    return sorted({module_of(n) for n in names if lora_kind(n) == "A" and lora_name(module_of(n), "B") in names})


@dataclass(frozen=True)
class Adapter:
    """An adapter folder: its config and its checked tensor header."""

    folder: Path
    config: dict[str, Any]
    header: safetensors_io.Header

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def names(self) -> list[str]:
        return sorted(self.header.tensors)

    def scale(self, module: str) -> float:
        """LoRA scale s = alpha / r (alpha / sqrt(r) with rsLoRA), honouring rank and alpha patterns."""
        r, alpha = self.rank(module), self._pattern("alpha_pattern", module, self.config.get("lora_alpha", 8))
        return float(alpha) / (math.sqrt(r) if self.config.get("use_rslora") else r)

    def rank(self, module: str) -> int:
        return int(self._pattern("rank_pattern", module, self.config.get("r", 8)))

    def _pattern(self, key: str, module: str, default: Any) -> Any:
        for pattern, value in (self.config.get(key) or {}).items():
            if re.search(rf"(^|\.){pattern}$", module.replace("base_model.model.", "")):
                return value
        return default

    def lora_signature(self) -> dict[str, Any]:
        """The LoRA settings that must agree for factor-space arithmetic across clients."""
        keys = ("r", "lora_alpha", "use_rslora", "target_modules", "modules_to_save", "rank_pattern", "alpha_pattern")
        sig = {k: self.config.get(k) for k in keys}
        if isinstance(sig["target_modules"], list):
            sig["target_modules"] = sorted(sig["target_modules"])
        return sig


def read_adapter(folder: str | Path) -> Adapter:
    """Open an adapter folder, checking that both files are there, readable and well-formed."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise UserError(f"{folder}: adapter folder not found")
    try:
        raw = read_regular(cfg_path, MAX_CONFIG_BYTES)
    except UserError as e:
        if not cfg_path.exists():
            raise UserError(f"{cfg_path}: missing: not a PEFT adapter folder") from None
        raise e
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{cfg_path}: not valid JSON") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{cfg_path}: not a LoRA adapter config (peft_type must be LORA)")
    check_lora_config(config, str(cfg_path))
    return Adapter(folder, config, safetensors_io.read_header(folder / WEIGHTS_FILE))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _names(v: Any) -> bool:
    """A module list as PEFT writes it: null, one string (a regex) or a list of strings."""
    return v is None or (isinstance(v, str) and len(v) <= 4096) or (
        isinstance(v, list) and len(v) <= 4096 and all(isinstance(x, str) and 0 < len(x) <= 256 for x in v))


def _pattern_ok(v: Any, check: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict) or len(v) > 4096:
        return False
    for pattern, value in v.items():
        if len(pattern) > 256 or not check(value):
            return False
        try:
            re.compile(pattern)
        except re.error:
            return False
    return True


_LORA_RULES: dict[str, tuple[str, Any]] = {
    "r": (f"an integer in [1, {MAX_RANK}]",
          lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_RANK),
    "lora_alpha": ("a finite number > 0", lambda v: _is_number(v) and v > 0),
    "use_rslora": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
    "target_modules": ("null, a string or a list of names", _names),
    "modules_to_save": ("null, a string or a list of names", _names),
    "rank_pattern": (f"a map of regex -> rank in [1, {MAX_RANK}]",
                     lambda v: _pattern_ok(v, _LORA_RULES["r"][1])),
    "alpha_pattern": ("a map of regex -> alpha > 0",
                      lambda v: _pattern_ok(v, _LORA_RULES["lora_alpha"][1])),
}


def check_lora_config(config: Any, where: str) -> dict[str, Any]:
    """`config` if its LoRA settings (those fedbip computes with: rank, alpha, rsLoRA, targets, patterns)
    have the types and ranges PEFT gives them; else one UserError naming the key. Used for adapter
    configs and for the `lora_config` a task vector carries in its metadata."""
    if not isinstance(config, dict):
        raise UserError(f"{where}: LoRA config must be a JSON object, got {type(config).__name__}")
    for key, (rule, ok) in _LORA_RULES.items():
        if key in config and not (config[key] is None and key != "r" and key != "lora_alpha") and not ok(config[key]):
            raise UserError(f"{where}: {key} must be {rule}, got {_short(config[key])}")
    return config


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_adapter_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_adapter(folder: str | Path, config: dict[str, Any], tensors: dict[str, Any],
                 dtypes: dict[str, str] | None = None) -> None:
    """Write a complete adapter folder atomically from in-memory arrays."""
    with atomic_dir(folder) as tmp:
        write_adapter_config(tmp, config)
        safetensors_io.save(tmp / WEIGHTS_FILE, tensors, {"format": "pt"}, dtypes)


def copy_adapter(src: str | Path, dst: str | Path) -> None:
    """Copy an adapter folder's two files to `dst`, atomically."""
    with atomic_dir(dst) as tmp:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(Path(src) / name, tmp / name)


def check_adapter(folder: str | Path) -> Adapter:
    """Open an adapter and read every tensor: raises UserError unless the folder is whole and finite."""
    adapter = read_adapter(folder)
    for name in adapter.names:
        safetensors_io.read_tensor(adapter.header, name)
    return adapter
