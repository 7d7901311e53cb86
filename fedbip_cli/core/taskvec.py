"""Task vectors: what one client's fine-tuning changed in one round, as one safetensors file.

Factor space (DESIGN §2): tau = trained - start, tensor by tensor (LoRA A, LoRA B, dense head).
The file's string metadata says who made it, from what, on what model, so the coordinator can
refuse vectors that do not belong together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import stfile
from .adapter import Adapter
from .names import check_client_name

FORMAT = "fedbip.taskvec/1"
_REQUIRED = ("format", "client", "round", "space", "base_fingerprint", "start_sha256", "num_examples", "lora_config")


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

    header: stfile.Header
    meta: TaskVectorMeta

    @property
    def path(self) -> Path:
        return self.header.path


def parse_meta(header: stfile.Header) -> TaskVectorMeta:
    md = header.metadata
    path = header.path
    missing = [k for k in _REQUIRED if k not in md]
    if missing:
        raise UserError(f"{path}: not a fedbip task vector: metadata lacks {', '.join(missing)}")
    if md["format"] != FORMAT:
        raise UserError(f"{path}: unsupported task vector format {md['format']!r} (expected {FORMAT})")
    try:
        rnd, n = int(md["round"]), int(md["num_examples"])
        lora = json.loads(md["lora_config"])
    except ValueError:
        raise UserError(f"{path}: task vector metadata round/num_examples/lora_config is malformed") from None
    if n <= 0:
        raise UserError(f"{path}: task vector num_examples must be positive, got {n}")
    return TaskVectorMeta(check_client_name(md["client"], f"{path}: metadata client"), rnd, md["space"],
                          md["base_fingerprint"], md["start_sha256"], n, lora)


def open_taskvec(path: str | Path) -> TaskVector:
    """Open and check one task vector file."""
    header = stfile.read_header(path)
    return TaskVector(header, parse_meta(header))


def write_taskvec(start: Adapter, trained: Adapter, out: str | Path, meta: TaskVectorMeta) -> None:
    """tau = trained - start, written tensor by tensor in float32 with `meta` in the header."""
    if start.names != trained.names:
        extra = sorted(set(trained.names) ^ set(start.names))
        raise UserError(f"{trained.folder}: tensors differ from the start adapter {start.folder}: {extra[:3]}")
    layout = {}
    for name in start.names:
        a, b = start.header.tensors[name], trained.header.tensors[name]
        if a.shape != b.shape:
            raise UserError(f"{trained.folder}: tensor {name!r} has shape {list(b.shape)}, start has {list(a.shape)}")
        layout[name] = ("F32", a.shape)
    with stfile.StreamWriter(out, layout, meta.to_strings()) as w:
        for name in start.names:
            w.write(name, stfile.read_tensor(trained.header, name) - stfile.read_tensor(start.header, name))
