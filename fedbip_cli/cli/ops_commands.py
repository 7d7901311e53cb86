"""Operations commands: the state of a round (`status`), for people and for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import EXIT_CODES_HELP, JsonOpt, WorkspaceOpt, app, emit_json, open_workspace, out, user_errors


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
