"""Content hashes for provenance (files, adapters, the base model's fingerprint) and hash-derived seeds."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from fedbip_cli.core.files.regular import open_regular, read_json
from fedbip_cli.errors import UserError


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file's bytes, read into one reused 8 MiB buffer (few GIL hand-overs, no
    fresh allocation per block: it often runs on a worker thread beside numpy). Regular files only: a FIFO
    planted where a file was recorded is a UserError, never a read that blocks (core/files/regular.py)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with os.fdopen(open_regular(path), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a base model: its config plus the name, shape, dtype and size of every weight.

    Hashing every weight byte of a 13 GB model would cost minutes; the safetensors headers (names,
    dtypes, shapes, offsets) and the config differ between any two models one would mix up, and are
    read in milliseconds. Models stored as pickles (`.bin`) contribute their file sizes only.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    cfg = model_dir / "config.json"
    if cfg.exists():
        doc = read_json(cfg)
        if not isinstance(doc, dict):
            raise UserError(f"{cfg}: a model config must be a JSON object")
        for volatile in ("_name_or_path", "transformers_version", "architectures"):
            doc.pop(volatile, None)
        h.update(json.dumps(doc, sort_keys=True).encode())
    for weights in sorted(model_dir.glob("*.safetensors")):
        with open(weights, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(n))
    for weights in sorted(model_dir.glob("*.bin")):
        h.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return h.hexdigest()[:32]


def stable_seed(*parts: object) -> int:
    """A seed derived from its parts through sha256 (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little")
