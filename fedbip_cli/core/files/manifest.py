"""manifest.json per round: sha256 of every input and output of each step, versions, config hash, timings.

Each step (finetune/<client>, taskvec/<client>, similarity, aggregate) owns one entry, replaced
whole when the step reruns; the file is rewritten atomically.
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Mapping

from fedbip_cli import __version__
from fedbip_cli.core.files.atomic import write_json
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.locks import file_lock
from fedbip_cli.core.files.regular import read_regular
from fedbip_cli.errors import UserError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def digest_paths(paths: Mapping[str, Path], relative_to: Path, digests: Digests) -> dict[str, str]:
    """{relative path: sha256} for files, and for every file inside folders (each file hashed once,
    even when several keys name it, e.g. clients sharing one start adapter)."""
    out: dict[str, str] = {}
    for p in paths.values():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        for f in files:
            rel = _rel(f, relative_to)
            if rel not in out:
                out[rel] = digests.digest(f)
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def record_step(round_dir: Path, step: str, *, inputs: Mapping[str, Path], outputs: Mapping[str, Path],
                config_sha256: str | None, seconds: float, extra: Mapping[str, Any] | None = None,
                digests: Digests | None = None) -> None:
    """Replace the entry `step` of the round's manifest (`digests`: the step's own, holding what it
    already hashed; by default the workspace's digest cache)."""

    root = round_dir.parent.parent
    if digests is None:
        with Digests(root) as own:
            return record_step(round_dir, step, inputs=inputs, outputs=outputs, config_sha256=config_sha256,
                               seconds=seconds, extra=extra, digests=own)
    path = round_dir / MANIFEST
    entry = {
        "fedbip_version": __version__,
        "python": platform.python_version(),
        "config_sha256": config_sha256,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
        "inputs": digest_paths(inputs, root, digests),
        "outputs": digest_paths(outputs, root, digests),
        **(dict(extra) if extra else {}),
    }
    with file_lock(round_dir / ".manifest.lock"):  # steps of other clients may record at the same time
        doc = read_manifest(round_dir)
        doc.setdefault("format", "fedbip.manifest/1")
        doc.setdefault("round", int(round_dir.name))
        doc.setdefault("steps", {})
        doc["steps"][step] = entry
        write_json(path, doc)


def read_manifest(round_dir: Path) -> dict[str, Any]:
    """The round's manifest ({} when there is none); a manifest that is not a JSON object whose `steps`
    map step names to objects is one UserError."""
    path = round_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        doc = json.loads(read_regular(path, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path}: corrupted manifest (not JSON)") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: corrupted manifest (not a JSON object)")
    steps = doc.get("steps", {})
    if not isinstance(steps, dict) or not all(isinstance(e, dict) for e in steps.values()):
        raise UserError(f"{path}: corrupted manifest ('steps' must map step names to objects)")
    return doc


def _recorded_files(round_dir: Path, step: str, entry: dict[str, Any], kind: str) -> dict[str, str]:
    """{path: sha256} recorded under entry[kind], each checked: a path relative to the workspace without
    '..' (or absolute, as recorded for inputs that lay outside it), a sha256 of 64 hex digits."""
    files = entry.get(kind, {})
    where = f"{round_dir / MANIFEST}: steps.{_printable(step)}.{kind}"
    if not isinstance(files, dict):
        raise UserError(f"{where}: must map file paths to sha256 digests")
    for rel, digest in files.items():
        parts = Path(rel).parts
        if ".." in parts or not parts or "\x00" in rel:
            raise UserError(f"{where}: {_printable(rel)!r} is not a plain file path (no '..')")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise UserError(f"{where}: {_printable(rel)!r} has no sha256 (got {_printable(str(digest))!r})")
    return files


def _printable(text: str, limit: int = 80) -> str:
    """A name from a manifest as it may appear in a one-line message: escaped, shortened."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_step(round_dir: Path, step: str, entry: dict[str, Any] | None = None) -> list[str]:
    """Problems with one recorded step: files missing or changed since the manifest was written
    (a recorded path that is no longer a regular file inside the workspace counts as missing)."""
    entry = entry if entry is not None else read_manifest(round_dir).get("steps", {}).get(step)
    if entry is None:
        return [f"{step}: not recorded in {round_dir / MANIFEST}"]
    root = round_dir.parent.parent
    problems = []
    for kind in ("inputs", "outputs"):
        for rel, digest in _recorded_files(round_dir, step, entry, kind).items():
            path = root / rel
            name = f"{_printable(step)}: {_printable(rel, 200)}"
            try:  # is_file: FIFOs and devices are not files; relative paths must stay in the workspace
                present = path.is_file() and (Path(rel).is_absolute() or _inside(path, root))
            except OSError:  # a name too long for the file system, a loop of links
                present = False
            if not present:
                problems.append(f"{name} is missing")
            elif sha256_file(path) != digest:
                problems.append(f"{name} changed since it was recorded")
    return problems


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def verify_round(round_dir: Path) -> dict[str, list[str]]:
    """Check every step recorded in a round's manifest: {step: [problems]} (empty lists when intact)."""
    doc = read_manifest(round_dir)
    if not doc:
        raise UserError(f"{round_dir / MANIFEST}: no manifest (nothing recorded for this round)")
    return {step: check_step(round_dir, step, entry) for step, entry in doc.get("steps", {}).items()}
