"""Final rounds: once round T's adapters for T+1 exist, new or changed task vectors never rewrite them silently.

Adapters in rounds/T+1/ may already have been sent to the sites, which train from them. So when an
aggregation of round T has run and its inputs have changed since (a late task vector, one replaced,
one removed, other strategy settings), `aggregate` refuses with RoundConflict (exit 3) and changes
nothing. `--force` redoes it, and the manifest entry then records what changed and why
(`rerun`), with a summary of every earlier aggregation of the round (`history`).

Straggler policy: a task vector that arrives after its round was aggregated is not used in that
round. Its client kept its adapter (rounds/T+1/start/<client> is a copy of its round-T start), so
it trains round T+1 from there and its work counts from the next round on.

Restoring damaged outputs from unchanged inputs is no conflict: the rerun writes the same bytes the
manifest records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.manifest import MANIFEST, read_manifest
from fedbip_cli.errors import RoundConflict
from fedbip_cli.steps.coordinator.inputs import arrived_vectors
from fedbip_cli.workspace.layout import Workspace

SETTINGS = ("strategy", "options", "space", "clip_factor")
"""Entries of the aggregate record that shape its outputs besides the task vectors."""


@dataclass
class Changes:
    """How the task vectors and settings of a round differ from those its recorded aggregation used."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.settings)

    def describe(self) -> str:
        parts = []
        if self.added:
            parts.append(f"arrived late: {', '.join(self.added)}")
        if self.changed:
            parts.append(f"changed: {', '.join(self.changed)}")
        if self.removed:
            parts.append(f"removed: {', '.join(self.removed)}")
        for key, diff in self.settings.items():
            parts.append(f"{key} {diff['before']!r} -> {diff['now']!r}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed, "settings": self.settings}


def outputs_exist(ws: Workspace, t: int) -> bool:
    """Whether rounds/T+1 holds any adapter an aggregation of round T writes."""
    nxt = ws.round_dir(t + 1)
    return (nxt / "global").is_dir() or any(p.is_dir() for p in (nxt / "start").glob("*"))


def changes_since(ws: Workspace, t: int, entry: dict[str, Any], folder: Path, settings: dict[str, Any] | None,
                  digests: Digests) -> Changes:
    """What differs between the task vectors now in `folder` (and `settings`, unless None) and what `entry` used."""
    used = list(entry.get("clients", []))
    recorded = {Path(rel).stem: sha for rel, sha in entry.get("inputs", {}).items()  # client -> sha256 it read
                if Path(rel).stem in used and Path(rel).name != "adapter_model.safetensors"}
    now = arrived_vectors(folder)
    out = Changes(added=[c for c in now if c not in used], removed=[c for c in used if c not in now])
    out.changed = [c for c in used if c in now and c in recorded and digests.digest(now[c]) != recorded[c]]
    now_settings = settings if settings is not None else {}
    for key in SETTINGS if settings is not None else ():
        if key in entry and entry.get(key) != now_settings.get(key):
            out.settings[key] = {"before": entry.get(key), "now": now_settings.get(key)}
    return out


def refuse_or_record(ws: Workspace, t: int, folder: Path, settings: dict[str, Any],
                     force: bool, digests: Digests | None = None) -> dict[str, Any] | None:
    """Raise RoundConflict if round t is final and its inputs changed (unless `force`). `digests`: the
    step's own digest cache, so that what this check hashes is not hashed again by the step.

    Returns the manifest record of a forced rerun ({"rerun": ..., "history": [...]}), to be stored in
    the new aggregate entry; None when nothing differs or no aggregation ran yet."""
    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get("aggregate")
    if not outputs_exist(ws, t):
        return _history(entry, None, force) if entry and force else None
    if entry is None:
        if force:
            return {"rerun": {"forced": True, "reason": "adapters in rounds/T+1 had no recorded aggregation",
                              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
        raise RoundConflict(f"{ws.round_dir(t + 1)}: already holds adapters, but {ws.round_dir(t) / MANIFEST} records "
                            f"no aggregation of round {t}; nothing changed (use --force to replace them)")
    changes = _changes(ws, t, entry, folder, settings, digests)
    if not changes:
        return _history(entry, None, force) if force else None
    if not force:
        late = (f"; under the straggler policy late vectors count from round {t + 1} on: their clients kept their "
                f"adapter in rounds/{t + 1:04d}/start/ and train round {t + 1} from it") if changes.added else ""
        raise RoundConflict(f"round {t} is final: {ws.round_dir(t + 1)} holds the adapters aggregated at "
                            f"{entry.get('finished_at', '?')} from {', '.join(entry.get('clients', [])) or 'none'}; "
                            f"since then {changes.describe()}{late}. Nothing changed (use --force to redo round {t} "
                            f"and rewrite adapters that may already have been sent)")
    return _history(entry, changes, force)


def _changes(ws: Workspace, t: int, entry: dict[str, Any], folder: Path, settings: dict[str, Any] | None,
             digests: Digests | None = None) -> Changes:
    """changes_since with the step's digest cache (which it saves only when it ends well), else one that is
    read but not saved: this is a check before the step, and a step that then refuses its input must leave
    every file as it was, its caches included."""
    if digests is not None:
        return changes_since(ws, t, entry, folder, settings, digests)
    own = Digests(ws.root)
    try:
        return changes_since(ws, t, entry, folder, settings, own)
    finally:
        own.close(save=False)


def refuse_similarity(ws: Workspace, t: int, folder: Path) -> None:
    """Raise RoundConflict if round t is final and its task vectors differ from those it was aggregated
    from: a new similarity.json would then disagree with the weights.json the adapters came from."""
    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get("aggregate")
    if entry is None or not outputs_exist(ws, t):
        return
    changes = _changes(ws, t, entry, folder, None)
    if changes:
        raise RoundConflict(f"round {t} is final (aggregated at {entry.get('finished_at', '?')}); since then "
                            f"{changes.describe()}: similarity would no longer describe its adapters. Nothing changed "
                            f"(use --force to recompute it anyway)")


def _history(entry: dict[str, Any], changes: Changes | None, force: bool) -> dict[str, Any]:
    """The rerun note and the history of earlier aggregations, for the new manifest entry."""
    previous = {k: entry.get(k) for k in ("finished_at", "clients", *SETTINGS)}
    previous["outputs"] = entry.get("outputs", {})
    return {"rerun": {"forced": force, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "reason": ("--force: " + changes.describe()) if changes else "--force: inputs unchanged",
                      **(changes.to_json() if changes else {})},
            "history": [*entry.get("history", []), previous]}
