"""The task vectors' Gram matrices, saved by `similarity` and reused by `aggregate`.

Both steps need the same K x K Gram matrices (per module and overall), and computing them is a full
pass over every task vector. `similarity` writes them to rounds/T/grams.safetensors (float64, one
tensor per module plus "*" for the whole vector) with the space and the sha256 of the task vector
bytes they were computed from (hashed from the reads themselves). `aggregate` tries them when the
digest cache still knows those digests for the files (`Digests.cached`, a stat-data hint), and keeps
its result only if the digests of the bytes its output pass reads are the same (steps/coordinator/aggregate.py);
otherwise it computes them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedbip_cli.core.files.atomic import write_bytes
from fedbip_cli.core.files.regular import read_regular
from fedbip_cli.errors import UserError

FILE = "grams.safetensors"
FORMAT = "fedbip.grams/1"
MAX_GRAM_BYTES = 1 << 30  # K x K float64 per layer: 1,000 clients x 100 layers is 800 MB


def save_grams(path: Path, grams: dict[str, np.ndarray], space: str, clients: list[str], sha256: list[str]) -> None:
    """Write the Gram matrices with what they were computed from (atomically)."""
    meta = {"format": FORMAT, "space": space, "clients": json.dumps(clients), "taskvec_sha256": json.dumps(sha256)}
    write_bytes(path, save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in grams.items()}, metadata=meta))


def load_grams(path: Path, space: str, clients: list[str], sha256: list[str | None]) -> dict[str, np.ndarray] | None:
    """The saved Gram matrices if they were computed in `space` from exactly these task vectors, else None."""
    if None in sha256 or not path.is_file():
        return None
    try:
        raw = read_regular(path, MAX_GRAM_BYTES)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
        if (meta.get("format") != FORMAT or meta.get("space") != space
                or json.loads(meta.get("clients", "null")) != clients
                or json.loads(meta.get("taskvec_sha256", "null")) != sha256):
            return None
        grams = load(raw)
    except (OSError, ValueError, RecursionError, AttributeError, SafetensorError, UserError):
        return None  # a damaged cache is recomputed, never trusted
    k = len(clients)
    return grams if all(g.shape == (k, k) for g in grams.values()) else None
