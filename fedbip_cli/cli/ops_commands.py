"""Operations commands: the state of a round (`status`), and one archive to carry between sides (`pack`,
`unpack`), for people and for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import (
    EXIT_CODES_HELP,
    ClientOpt,
    JsonOpt,
    WorkspaceOpt,
    allow_out,
    app,
    console,
    emit_json,
    open_workspace,
    out,
    site_round,
    user_errors,
)


def _vector_cell(vec: Optional[dict]) -> str:
    if vec is None:
        return "missing"
    size = f"{vec['bytes'] / 1e6:.2f} MB" if vec["bytes"] >= 1e5 else f"{vec['bytes']} B"
    sha = f" sha256 {vec['sha256'][:12]}" if vec.get("sha256") else ""
    return f"{vec['state']}, {size}{sha}, {vec['modified']}"


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def status(round_: Optional[int] = typer.Option(None, "--round", "-r", min=0,
                                                help="Round (default: the round in progress; at a site, its "
                                                     "current round)."),
           client: Optional[str] = typer.Option(None, "--client", "-c",
                                                help="Show this site's view (its adapter, training, task vector)."),
           min_clients: int = typer.Option(2, "--min-clients", min=1, help="Task vectors aggregation waits for."),
           workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """What a round holds and what runs next: arrived task vectors (size, sha256, time), missing or
    incomplete ones, whether similarity and aggregation ran, the adapters ready for each site."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from rich.table import Table

    from fedbip_cli.steps.status import round_status

    st = round_status(open_workspace(workspace), round_, client, min_clients)
    if json_out:
        emit_json(st)
        return
    table = Table(title=f"round {st['round']} ({st['side']}: {st['workspace']})")
    for col in ("client", "start adapter", "trained", "task vector", "adapter for next round"):
        table.add_column(col)
    for c, s in st["clients"].items():
        table.add_row(c, s["start"] or "-", "yes" if s["trained"] else "no", _vector_cell(s["taskvec"]),
                      s["next_adapter"] or "-")
    out.print(table)
    for step in ("similarity", "aggregate") if st["side"] == "coordinator" else ():
        done = st[step]
        out.print(f"{step}: " + (f"done {done['finished_at']}" if done else "not run"))
    out.print(f"next: {st['next']}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def pack(client: str = ClientOpt,
         round_: Optional[int] = typer.Option(None, "--round", "-r", min=0,
                                              help="Round (default: a site's current round; at the coordinator, "
                                                   "the newest aggregated round)."),
         kind: Optional[str] = typer.Option(None, help="taskvec (a site's task vector of round T) or adapter "
                                                       "(the coordinator's adapter made from round T); default: "
                                                       "adapter where round T is aggregated here, else taskvec."),
         output: Optional[Path] = typer.Option(
             None, "--output", "-o", help="Archive to write (default: outbox/<client>-rT-<kind>.fedbip.tar)."),
         workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """One archive to carry to the other side: the file(s) and a sha256 list."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.transport import pack as run

    ws = open_workspace(workspace)
    res = run(ws, client, _pack_round(ws, client, round_), kind=kind, out=output and allow_out(output))
    if json_out:
        emit_json(res.to_json())
    else:
        console.print(f"wrote {res.archive} ({res.kind} of {client}, round {res.round}; {len(res.files)} file(s))")


def _pack_round(ws, client: str, round_: Optional[int]) -> int:
    """--round, else the newest round aggregated here (coordinator), else the site's current round."""
    if round_ is not None:
        return round_
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.core.files.manifest import read_manifest

    for t in range(ws.latest_round() or 0, -1, -1):
        if ws.round_dir(t).is_dir() and "aggregate" in read_manifest(ws.round_dir(t)).get("steps", {}):
            return t
    return site_round(ws, client, None)


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def unpack(archive: Path = typer.Argument(..., help="Archive written by `fedbip pack`."),
           force: bool = typer.Option(False, help="Replace a different file already in place."),
           workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """Verify an archive (sha256 of every file, paths that belong to this workspace, no links) and put its
    files in place atomically."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.transport import unpack as run

    res = run(open_workspace(workspace), archive, force=force)
    if json_out:
        emit_json(res.to_json())
    elif res.placed:
        console.print(f"placed {', '.join(res.placed)}")
    else:
        console.print(f"{archive}: already in place, nothing changed")
