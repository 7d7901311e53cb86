"""Print a sha256 for every file a federation wrote, ignoring only what differs from run to run.

Used to show that a change of code moves no byte of the outputs: run examples/three-sites/run.sh
before and after the change into the same folder, fingerprint both, and diff the two listings.

    python examples/three-sites/fingerprint.py WORKDIR > before.txt

Skipped: lock files and `.fedbip/` caches (inode and mtime keyed). In JSON and JSONL files, keys
holding wall-clock times (`finished_at`, `seconds`, `*_per_second`, ...) are dropped before hashing,
and peft's set-valued lists (`target_modules`, `modules_to_save`) are sorted. Safetensors files are
compared by content (sorted header, tensor bytes): the library writes metadata in hash-map order.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

VOLATILE = ("seconds", "_at", "per_second", "elapsed", "timestamp", "time")


SET_VALUED = ("target_modules", "modules_to_save")  # peft keeps these as sets: their order varies by process


def _clean(doc):
    if isinstance(doc, dict):
        return {k: sorted(v) if k in SET_VALUED and isinstance(v, list) else _clean(v)
                for k, v in doc.items() if not any(k == v_ or k.endswith(v_) for v_ in VOLATILE)}
    if isinstance(doc, list):
        return [_clean(v) for v in doc]
    return doc


def _canonical_safetensors(data: bytes) -> bytes:
    """The header as sorted JSON, then the tensor bytes: the safetensors library writes metadata keys in
    hash-map order, which varies between processes while the content does not."""
    n = int.from_bytes(data[:8], "little")
    return json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode() + data[8 + n:]


def fingerprint(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        data = _canonical_safetensors(data)
    elif path.name == "manifest.json":
        doc = _clean(json.loads(data))
        for step in doc.get("steps", {}).values():  # grams.safetensors' own sha256 varies with its header order
            for side in ("inputs", "outputs"):
                for name in list(step.get(side, {})):
                    if name.endswith("grams.safetensors"):
                        step[side][name] = "(compared by content)"
        data = json.dumps(doc, sort_keys=True).encode()
    elif path.suffix == ".json":
        data = json.dumps(_clean(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".jsonl":
        data = b"\n".join(json.dumps(_clean(json.loads(line)), sort_keys=True).encode()
                          for line in data.splitlines() if line.strip())
    return hashlib.sha256(data).hexdigest()


def main(root: str) -> None:
    base = Path(root)
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if not p.is_file() or p.name.endswith(".lock") or ".fedbip" in rel.parts:
            continue
        print(f"{fingerprint(p)}  {rel}")


if __name__ == "__main__":
    main(sys.argv[1])
