"""The state of a round, read from the workspace's files: what has arrived, what ran, what runs next.

The same function serves the coordinator (every client's task vector, similarity, aggregation, the
adapters ready for each site) and a site (`client`: its own start adapter, training, task vector,
and whether the coordinator's adapter for the next round is here). It only reads: nothing is
written, not even the digest cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.manifest import read_manifest
from fedbip_cli.errors import IncompleteFile, UserError
from fedbip_cli.steps.coordinator.final_round import outputs_exist
from fedbip_cli.steps.coordinator.inputs import arrived_vectors
from fedbip_cli.workspace.layout import Workspace


def vector_state(path: Path) -> dict[str, Any]:
    """One task vector file: size, sha256, modification time, and complete / incomplete / invalid."""
    st = path.stat()
    info: dict[str, Any] = {"file": str(path), "bytes": st.st_size,
                            "modified": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(st.st_mtime))}
    try:
        safetensors_io.read_header(path)
    except IncompleteFile:
        return info | {"state": "incomplete", "sha256": None}
    except UserError as e:
        return info | {"state": "invalid", "problem": str(e), "sha256": None}
    return info | {"state": "complete", "sha256": sha256_file(path)}


def _adapter_for(ws: Workspace, t: int, client: str) -> str | None:
    for folder in (ws.start_dir(t, client), ws.global_dir(t)):
        if folder.is_dir():
            return str(folder)
    return str(ws.initial_dir) if t == 0 and ws.initial_dir.is_dir() else None


def _step(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    entry = doc.get("steps", {}).get(name)
    return None if entry is None else {"finished_at": entry.get("finished_at"), "clients": entry.get("clients")}


def round_status(ws: Workspace, t: int | None = None, client: str | None = None,
                 min_clients: int = 2) -> dict[str, Any]:
    """Round t's state (default: the round in progress: the coordinator's newest round, or the site's
    current round for `client`), with the next command of each side."""
    if client is not None:
        ws.client(client)
    if t is None:
        t = ws.current_round(client) if client is not None else (ws.latest_round() or 0)
    doc = read_manifest(ws.round_dir(t)) if ws.round_dir(t).is_dir() else {}
    aggregate = _step(doc, "aggregate")
    final = aggregate is not None and outputs_exist(ws, t)
    arrived = arrived_vectors(ws.deltas_dir(t))
    used = set(aggregate["clients"] or []) if aggregate else set()
    names = [client] if client is not None else list(ws.config.clients)
    clients: dict[str, Any] = {}
    for c in names:
        vec = vector_state(arrived[c]) if c in arrived else None
        if vec is not None and final and c not in used:
            vec["state"] = "late"  # arrived after its round was aggregated: counts from the next round on
        clients[c] = {"start": _adapter_for(ws, t, c), "trained": ws.trained_dir(t, c).is_dir(),
                      "taskvec": vec, "next_adapter": _adapter_for(ws, t + 1, c) if final or client else None}
    complete = [c for c, s in clients.items() if s["taskvec"] and s["taskvec"]["state"] == "complete"]
    status = {"workspace": str(ws.root), "round": t, "side": "site" if client else "coordinator",
              "clients": clients, "arrived": complete,
              "missing": [c for c, s in clients.items() if s["taskvec"] is None],
              "incomplete": [c for c, s in clients.items() if s["taskvec"] and s["taskvec"]["state"] == "incomplete"],
              "similarity": _step(doc, "similarity"), "aggregate": aggregate, "final": final}
    status["next"] = (_site_next(ws, t, client, clients[client]) if client
                      else _coordinator_next(ws, t, status, min_clients))
    return status


def _coordinator_next(ws: Workspace, t: int, status: dict[str, Any], min_clients: int) -> str:
    if status["final"]:
        late = [c for c, s in status["clients"].items() if s["taskvec"] and s["taskvec"]["state"] == "late"]
        note = f"; late vectors ({', '.join(late)}) count from round {t + 1} on" if late else ""
        return (f"send each site its adapter from {ws.round_dir(t + 1)}/start/<client> (or `fedbip pack`), "
                f"then wait for round {t + 1}'s task vectors{note}")
    n, k = len(status["arrived"]), len(status["clients"])
    if n >= min_clients:
        return f"fedbip aggregate --round {t}  ({n} of {k} task vectors arrived)"
    return f"wait for task vectors: {n} of {k} arrived, at least {min_clients} needed (aggregate exits 75 meanwhile)"


def _site_next(ws: Workspace, t: int, client: str, mine: dict[str, Any]) -> str:
    if mine["start"] is None and t > 0:
        return f"wait for the coordinator's adapter for round {t} and copy it to {ws.start_dir(t, client)}"
    if not mine["trained"]:  # round 0: finetune makes the shared initial adapter first
        return f"fedbip finetune --client {client}"
    if mine["taskvec"] is None:
        return f"fedbip taskvec --client {client}"
    return (f"send {ws.taskvec_path(t, client)} to the coordinator, then wait for its adapter for round {t + 1} "
            f"({ws.start_dir(t + 1, client)})")
