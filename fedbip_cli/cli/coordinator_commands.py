"""Coordinator commands: similarity, aggregation, verification of a round, the strategy list.

Each command is a thin wrapper over a library function; heavy modules are imported inside the body so
`fedbip --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import (
    EXIT_CODES_HELP,
    JsonOpt,
    RoundOpt,
    SetOpt,
    SpaceOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    open_workspace,
    out,
    user_errors,
)
from fedbip_cli.core.strategies.registry import CATALOGUE
from fedbip_cli.errors import UserError


def _matrix_table(title: str, clients: list[str], matrix):
    from rich.table import Table  # imported on use: `fedbip --help` stays fast

    table = Table(title=title, show_lines=False)
    table.add_column("")
    for c in clients:
        table.add_column(c, justify="right")
    for c, row in zip(clients, matrix):
        table.add_row(c, *(f"{v:.3f}" for v in row))
    return table


INPUTS_HELP = ("Folder of <client>.safetensors task vectors (default: rounds/T/deltas); a relative path is "
               "looked up in the round folder, then the workspace, then the current folder.")
MIN_CLIENTS_HELP = "Wait (exit 75) until this many task vectors have arrived."


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def similarity(round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
               inputs: Optional[Path] = typer.Option(None, help=INPUTS_HELP),
               min_clients: int = typer.Option(2, "--min-clients", min=1, help=MIN_CLIENTS_HELP),
               force: bool = typer.Option(False, help="Redo it even if it already ran from these task vectors."),
               layer_wise: bool = typer.Option(False, "--layer-wise", help="Also one matrix per module."),
               space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Pairwise cosine similarity of the round's task vectors -> similarity.json/.csv/.png."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.coordinator import similarity as run

    with console.status(f"similarity of round {round_}: reading task vectors", spinner="dots"):
        res = run(open_workspace(workspace, set_), round_, inputs, layer_wise=layer_wise, space=space,
                  min_clients=min_clients, force=force)
    if json_out:
        emit_json(res.to_json())
        return
    if res.skipped:
        console.print(f"round {round_}: similarity already computed from these task vectors (use --force to redo)")
    out.print(_matrix_table(f"task-vector cosine, round {round_}", res.clients, res.matrix))
    if res.zero_clients:
        console.print(f"all-zero task vectors (cosine 0 to others): {', '.join(res.zero_clients)}")
    console.print(f"wrote {', '.join(res.files.values())}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def aggregate(round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
              inputs: Optional[Path] = typer.Option(None, help=INPUTS_HELP),
              strategy: Optional[str] = typer.Option(None, help="Strategy (default: aggregation.strategy); "
                                                                "see `fedbip strategies`."),
              min_clients: int = typer.Option(2, "--min-clients", min=1,
                                              help="Aggregate once this many task vectors have arrived (before: "
                                                   "exit 75); configured clients without one keep their adapter."),
              force: bool = typer.Option(False, help="Redo it even if it already ran; on a final round (its "
                                                     "adapters exist) with late or changed task vectors, rewrite "
                                                     "them (recorded in manifest.json)."),
              space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """One personalized adapter per client for round T+1, the global adapter and weights.json."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.coordinator import aggregate as run

    ws = open_workspace(workspace, set_)
    with console.status(f"aggregating round {round_}", spinner="dots"):
        res = run(ws, round_, inputs, strategy=strategy, min_clients=min_clients, space=space, force=force)
    if json_out:  # everything weights.json records (clipped clients, late joiners, example counts), and more
        from fedbip_cli.workspace.layout import read_json

        emit_json({**read_json(ws.round_dir(round_) / "weights.json"), **res.to_json()})
        return
    if res.skipped:
        console.print(f"round {round_}: already aggregated with {res.strategy} from these inputs; outputs verified "
                      f"against the manifest (use --force to redo)")
        return
    out.print(_matrix_table(f"{res.strategy} weights, round {round_} -> {round_ + 1}", res.clients, res.weights))
    if res.kept:
        console.print(f"kept their previous adapter (no task vector this round): {', '.join(res.kept)}")
    if res.truncation:
        worst = max(res.truncation.items(), key=lambda kv: kv[1]["relative"])
        console.print(f"delta space: largest relative truncation error {worst[1]['relative']:.2e} ({worst[0]}); "
                      f"per output in weights.json")
    console.print(f"wrote {len(res.clients)} personalized adapters and the global adapter into "
                  f"{Path(res.outputs['global']).parent}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def verify(round_: int = RoundOpt, workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """Check a round folder against its manifest.json: every recorded input and output, by sha256."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.core.files.manifest import verify_round
    from fedbip_cli.workspace.layout import Workspace

    report = verify_round(Workspace.open(workspace).round_dir(round_))
    problems = [p for ps in report.values() for p in ps]
    if json_out:
        emit_json({"round": round_, "ok": not problems, "steps": report})
    else:
        from rich.markup import escape

        for step, ps in report.items():  # step names and paths come from the manifest: printed as text
            out.print(f"[{'red' if ps else 'green'}]{'FAIL' if ps else 'ok'}[/] "
                      + escape(f"{step}" + (f": {'; '.join(ps)}" if ps else "")), soft_wrap=True)
    if problems:
        raise UserError(f"round {round_}: {len(problems)} problem(s): {problems[0]}")


@app.command(epilog=EXIT_CODES_HELP,
             help=f"List the aggregation strategies ({', '.join(CATALOGUE)}): what each does, its settings "
                  f"(aggregation: keys of fedbip.yaml), what a site does with the adapter it receives, and where it "
                  f"differs from its reference implementation.")
def strategies(json_out: bool = JsonOpt) -> None:
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.core.strategies.base import AFTER_RECEIVE
    from fedbip_cli.core.strategies.registry import all_strategies

    classes = all_strategies()
    if json_out:
        emit_json({n: c.describe() for n, c in classes.items()})
        return
    for n, c in classes.items():
        out.print(f"[bold]{n}[/]: {c.summary}", highlight=False)
        out.print(f"  a site then {AFTER_RECEIVE[c.after_receive]}", highlight=False)
        for p in c.params:
            default = "null" if p.default is None else p.default
            out.print(f"  aggregation.{p.name} = {default}  ({p.type}, {p.range_text()}): {p.help}", highlight=False)
        if c.differs:
            out.print(f"  differs from its reference implementation: {c.differs}", highlight=False)
