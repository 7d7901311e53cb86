"""Task vectors: what one client's fine-tuning changed in one round, as one safetensors file.

Two spaces (DESIGN §2, docs/delta-space.md), recorded in the metadata's `space`:

- factor: tau = trained - start, tensor by tensor, under the adapter's own names (LoRA A, LoRA B,
  dense head).
- delta: per LoRA module, tau_m = ΔW_m(trained) - ΔW_m(start) kept as low-rank factors
  `<module>.delta_U` = s·[B', -B] (out x 2r) and `<module>.delta_V` = [A'; A] (2r x in), so
  U @ V is exactly the change of the module's weight; dense tensors stay plain differences under
  their own names. Storing U and V (rather than ΔW, out x in) keeps the file at twice the adapter's
  size, and with the scale folded in the file is self-contained: the coordinator needs neither the
  adapter config nor the start adapter to compute similarities.

The file's string metadata says who made it, from what, on what model, so the coordinator can
refuse vectors that do not belong together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import (
    Adapter,
    check_lora_config,
    lora_kind,
    lora_modules,
    lora_name,
    module_of,
)
from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.errors import UserError

FORMAT = "fedbip.taskvec/1"
SPACES = ("factor", "delta")
_REQUIRED = ("format", "client", "round", "space", "base_fingerprint", "start_sha256", "num_examples", "lora_config")
MAX_EXAMPLES = 10 ** 12
"""Upper bound on a task vector's `num_examples`: far above any site's data set, far below where float64
weights lose integers; the coordinator may cap it lower per client (clients.<name>.max_examples)."""
MAX_ROUND = 10 ** 6
_DIGITS = re.compile(r"^[0-9]{1,13}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_META_CHARS = 64 * 1024


@dataclass(frozen=True)
class TaskVectorMeta:
    """The provenance a task vector file carries in its header."""

    client: str
    round: int
    space: str
    base_fingerprint: str
    start_sha256: str
    num_examples: int
    lora_config: dict

    def to_strings(self) -> dict[str, str]:
        return {
            "format": FORMAT, "client": self.client, "round": str(self.round), "space": self.space,
            "base_fingerprint": self.base_fingerprint, "start_sha256": self.start_sha256,
            "num_examples": str(self.num_examples), "lora_config": json.dumps(self.lora_config, sort_keys=True),
        }


@dataclass(frozen=True)
class TaskVector:
    """An opened, checked task vector file (tensors are read lazily through `header`)."""

    header: safetensors_io.Header
    meta: TaskVectorMeta

    @property
    def path(self) -> Path:
        return self.header.path


def parse_meta(header: safetensors_io.Header) -> TaskVectorMeta:
    """The checked provenance of a task vector: every field of the right form and range, or one
    UserError naming the file and the field."""
    md = header.metadata
    path = header.path
    missing = [k for k in _REQUIRED if k not in md]
    if missing:
        raise UserError(f"{path}: not a fedbip task vector: metadata lacks {', '.join(missing)}")
    long = [k for k in _REQUIRED if len(md[k]) > MAX_META_CHARS]
    if long:
        raise UserError(f"{path}: task vector metadata {long[0]} is longer than {MAX_META_CHARS} characters")
    if md["format"] != FORMAT:
        raise UserError(f"{path}: unsupported task vector format {md['format'][:40]!r} (expected {FORMAT})")
    rnd = _bounded_int(path, "round", md["round"], 0, MAX_ROUND)
    n = _bounded_int(path, "num_examples", md["num_examples"], 1, MAX_EXAMPLES)
    if md["space"] not in SPACES:
        raise UserError(f"{path}: task vector space {md['space'][:40]!r} is not one of {', '.join(SPACES)}")
    if not _HEX64.match(md["start_sha256"]):
        raise UserError(f"{path}: task vector metadata start_sha256 is not a sha256 (64 lowercase hex digits)")
    if not _FINGERPRINT.match(md["base_fingerprint"]):
        raise UserError(f"{path}: task vector metadata base_fingerprint must be 1-128 letters, digits or ._:-")
    try:
        lora = json.loads(md["lora_config"])
    except (ValueError, RecursionError):
        raise UserError(f"{path}: task vector metadata lora_config is not valid JSON") from None
    check_lora_config(lora, f"{path}: metadata lora_config")
    return TaskVectorMeta(check_client_name(md["client"], f"{path}: metadata client"), rnd, md["space"],
                          md["base_fingerprint"], md["start_sha256"], n, lora)


def _bounded_int(path: Path, key: str, text: str, low: int, high: int) -> int:
    """A metadata integer written as plain decimal digits, within [low, high]."""
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise UserError(f"{path}: task vector metadata {key} must be an integer in [{low}, {high}], got {text[:40]!r}")
    return int(text)


def open_taskvec(path: str | Path) -> TaskVector:
    """Open and check one task vector file."""
    header = safetensors_io.read_header(path)
    return TaskVector(header, parse_meta(header))


def check_space(space: str, where: str = "--space") -> str:
    """Return `space` if it is one of SPACES, else raise UserError naming it."""
    if space not in SPACES:
        raise UserError(f"{where}: unknown space {space!r} (choose {' or '.join(SPACES)})")
    return space


def delta_names(module: str) -> tuple[str, str]:
    """Names of a module's delta-space factors in a task vector file: (U, V)."""
    return f"{module}.delta_U", f"{module}.delta_V"


def taskvec_layout(start: Adapter, space: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of the task vector made from adapters shaped like `start`, in `space`.

    Always F32: the difference of two fp16/bf16 tensors is exact in fp32, and a delta-space U
    carries the scale s.
    """
    modules = set(lora_modules(start.names)) if space == "delta" else set()
    layout: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in start.names:
        module, kind = module_of(name), lora_kind(name)
        if module not in modules or not kind:
            layout[name] = ("F32", start.header.tensors[name].shape)
        elif kind == "A":
            r, n_in = start.header.tensors[name].shape
            n_out = start.header.tensors[lora_name(module, "B")].shape[0]
            u_name, v_name = delta_names(module)
            layout[u_name] = ("F32", (n_out, 2 * r))
            layout[v_name] = ("F32", (2 * r, n_in))
    return layout


def write_taskvec(start: Adapter, trained: Adapter, out: str | Path, meta: TaskVectorMeta) -> None:
    """The task vector trained - start in `meta.space`, written tensor by tensor with `meta` in the header."""
    check_space(meta.space, f"{out}: space")
    if start.names != trained.names:
        extra = sorted(set(trained.names) ^ set(start.names))
        raise UserError(f"{trained.folder}: tensors differ from the start adapter {start.folder}: {extra[:3]}")
    for name in start.names:
        a, b = start.header.tensors[name], trained.header.tensors[name]
        if a.shape != b.shape:
            raise UserError(f"{trained.folder}: tensor {name!r} has shape {list(b.shape)}, start has {list(a.shape)}")
    layout = taskvec_layout(start, meta.space)

    def read(adapter: Adapter, name: str) -> np.ndarray:
        return safetensors_io.read_tensor(adapter.header, name)

    with safetensors_io.StreamWriter(out, layout, meta.to_strings()) as w:
        for name in layout:
            if name in start.header.tensors:
                w.write(name, read(trained, name) - read(start, name))
            elif name.endswith(".delta_U"):
                module = name[: -len(".delta_U")]
                b_name = lora_name(module, "B")
                s = np.float32(start.scale(module))
                w.write(name, np.concatenate([read(trained, b_name) * s, -(read(start, b_name) * s)], axis=1))
            else:
                module = name[: -len(".delta_V")]
                a_name = lora_name(module, "A")
                w.write(name, np.concatenate([read(trained, a_name), read(start, a_name)], axis=0))
