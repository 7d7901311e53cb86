"""Deployment commands: `export` (a client's adapter as a folder standard stacks load without fedbip)
and `predict` (batched predictions of a client's adapter on a file). Thin wrappers over steps/export.py
and steps/predict.py; docs/deploy.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import (
    ClientOpt,
    JsonOpt,
    RoundOpt,
    SetOpt,
    WorkspaceOpt,
    allow_out,
    app,
    console,
    emit_json,
    open_workspace,
    user_errors,
)
from fedbip_cli.errors import UserError


@app.command()
@user_errors
def export(client: str = ClientOpt, round_: int = RoundOpt,
           out_dir: Path = typer.Option(..., "--out", help="Folder to write (must not exist, unless --force)."),
           merge: bool = typer.Option(False, "--merge", help="Merge LoRA into the base weights (loads without peft)."),
           force: bool = typer.Option(False, help="Replace an existing --out folder."),
           workspace: Path = WorkspaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Export the client's adapter of the round (the one `eval -r T` scores) for a serving stack or the hub:
    adapter (or merged model), tokenizer/processor, labels and model card."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.export import export as run

    info = run(open_workspace(workspace, set_), client, round_, allow_out(out_dir), merge=merge, force=force)
    if json_out:
        emit_json(info)
    else:
        kind = "merged model" if merge else "adapter"
        console.print(f"{client} round {round_}: {kind} for {info['route']} -> {out_dir} "
                      f"({len(info['files'])} files; see its README.md)")


@app.command()
@user_errors
def predict(client: str = ClientOpt, round_: int = RoundOpt,
            input_file: Path = typer.Option(..., "--input", "-i", help="JSONL or CSV rows (.npz for images)."),
            out_file: Optional[Path] = typer.Option(None, "--out", "-o",
                                                    help="JSONL file of predictions (default: stdout)."),
            batch_size: int = typer.Option(32, help="Rows per batch.", min=1),
            workspace: Path = WorkspaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Predict every row of a file with the client's adapter of the round: label and class probabilities
    (classification) or the generation (causal-lm), one JSON line per row."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from fedbip_cli.core.files.atomic import atomic_open
    from fedbip_cli.steps.predict import predict as run

    if json_out and out_file is None:
        raise UserError("--json: needs --out (without it the predictions themselves go to stdout)")
    ws = open_workspace(workspace, set_)
    if out_file is not None:
        allow_out(out_file)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"predict {client} r{round_}", total=None)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if out_file is None:
            summary = run(ws, client, round_, input_file, sys.stdout, batch_size=batch_size, on_progress=step)
        else:
            with atomic_open(out_file, "w") as sink:
                summary = run(ws, client, round_, input_file, sink, batch_size=batch_size, on_progress=step)
    summary["out"] = str(out_file) if out_file is not None else None
    if json_out:
        emit_json(summary)
    else:
        counts = summary.get("label_counts")
        detail = ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else ""
        console.print(f"{client} round {round_}: {summary['rows']} rows predicted in {summary['seconds']:.1f}s"
                      + (f" ({detail})" if detail else "") + (f" -> {out_file}" if out_file else ""))
