"""Site commands: set up a workspace, fine-tune, write the task vector, evaluate, TAP's stages.

Each command is a thin wrapper over a library function; heavy modules are imported inside the body so
`fedbip --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import (
    EXIT_CODES_HELP,
    ClientOpt,
    JsonOpt,
    SetOpt,
    SiteRoundOpt,
    SpaceOpt,
    WorkspaceOpt,
    allow_out,
    app,
    console,
    emit_json,
    open_workspace,
    out,
    site_round,
    step_progress,
    user_errors,
)
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.task_types import METRIC_LABELS, task_type


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def init(
    folder: Path = typer.Argument(..., help="Workspace folder to create."),
    model: Optional[str] = typer.Option(None, help="Base model folder (default: the packaged all-MiniLM-L6-v2)."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated label set, in order."),
    force: bool = typer.Option(False, help="Overwrite an existing fedbip.yaml."),
) -> None:
    """Create a workspace: a commented fedbip.yaml to edit, and the rounds/ folder."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import init_workspace

    path = init_workspace(allow_out(folder), model_path=model, labels=labels.split(",") if labels else None,
                          force=force)
    console.print(f"wrote {path}: add your clients and their data files, then run `fedbip finetune`")


@app.command("labels", epilog=EXIT_CODES_HELP)
@user_errors
def labels_cmd(workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """Collect the label map (labels.json) from every client's training file present here."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import collect_labels

    labels = collect_labels(open_workspace(workspace))
    emit_json(labels) if json_out else console.print(f"labels.json: {', '.join(labels)}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def initial(workspace: Path = WorkspaceOpt, set_: Optional[list[str]] = SetOpt,
            force: bool = typer.Option(False, help="Recreate it even if it exists.")) -> None:
    """Create the shared initial adapter (round 0's start): seeded, identical at every site."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import make_initial

    with console.status("initial: loading the base model", spinner="dots"):
        path = make_initial(open_workspace(workspace, set_), force=force)
    console.print(f"initial adapter: {path}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def finetune(client: str = ClientOpt, round_: Optional[int] = SiteRoundOpt, workspace: Path = WorkspaceOpt,
             set_: Optional[list[str]] = SetOpt, force: bool = typer.Option(False, help="Retrain even if done."),
             json_out: bool = JsonOpt) -> None:
    """Fine-tune the client's start adapter of the round on its training data -> rounds/T/trained/<client>."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import finetune as run

    ws = open_workspace(workspace, set_)
    round_ = site_round(ws, client, round_)
    with step_progress(disable=json_out) as bar:
        task = bar.add_task(f"finetune {client} r{round_}", total=None, info="loading model and data")

        def step(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, info=f"{done}/{total} loss {loss:.3f}")

        info = run(ws, client, round_, force=force, on_step=step)
    if json_out:
        emit_json(info)
    elif info.get("skipped"):
        console.print(f"{client} round {round_}: already trained from this start adapter (use --force to redo)")
    else:
        console.print(f"{client} round {round_}: {info['steps']} steps, loss {info['final_loss']:.4f}, "
                      f"{info['examples_per_second']:.1f} examples/s -> {ws.trained_dir(round_, client)}")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def taskvec(client: str = ClientOpt, round_: Optional[int] = SiteRoundOpt, workspace: Path = WorkspaceOpt,
            space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt,
            force: bool = typer.Option(False, help="Rewrite it even if it was written from these adapters.")) -> None:
    """Write the client's task vector (trained - start) -> rounds/T/deltas/<client>.safetensors."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import taskvec as run

    ws = open_workspace(workspace, set_)
    round_ = site_round(ws, client, round_)
    path = run(ws, client, round_, space=space, force=force)
    emit_json({"client": client, "round": round_, "taskvec": str(path)}) if json_out else console.print(f"wrote {path}")


@app.command("eval", epilog=EXIT_CODES_HELP)
@user_errors
def eval_cmd(client: str = ClientOpt, round_: Optional[int] = SiteRoundOpt, workspace: Path = WorkspaceOpt,
             adapter: Optional[Path] = typer.Option(None, help="Adapter folder (default: the client's adapter "
                                                               "for this round)."),
             split: str = typer.Option("test", help="test | validation | train"),
             set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Metrics on the client's held-out data (accuracy, macro-F1, loss; causal-lm: ROUGE-1/2/L, exact match,
    token F1, loss, perplexity); appended to metrics.jsonl."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.site import evaluate

    if split not in ("test", "validation", "train"):
        raise UserError(f"--split: must be test, validation or train, got {split!r}")
    ws = open_workspace(workspace, set_)
    round_ = site_round(ws, client, round_)
    with console.status(f"eval {client} r{round_}: loading model and data, evaluating", spinner="dots"):
        rec = evaluate(ws, client, round_, adapter=adapter, split=split)
    if json_out:
        emit_json(rec)
    else:
        spec = task_type(ws.config.task.type)  # its headline first, then its other metrics (and perplexity)
        shown = dict.fromkeys((spec.headline, *spec.metrics, "perplexity"))
        out.print(f"{client} round {round_} {split}: "
                  + "  ".join(f"{METRIC_LABELS.get(k, k)} {rec[k]:.4f}" for k in shown if k in rec)
                  + f"  ({rec['examples']} examples)")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def accept(client: str = ClientOpt, round_: Optional[int] = SiteRoundOpt, workspace: Path = WorkspaceOpt,
           margin: Optional[float] = typer.Option(None, help="Replace only if loss(received) + margin < "
                                                             "loss(personal) (default: tap.margin / tap.margins)."),
           set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """TAP gate: adopt the adapter received for the round as the personal adapter only where it clearly helps."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.tap import accept as run

    ws = open_workspace(workspace, set_)
    decisions = run(ws, client, site_round(ws, client, round_), margin=margin)
    if json_out:
        emit_json(decisions)
        return
    for d in decisions:
        personal = "none" if d["personal_loss"] is None else f"{d['personal_loss']:.4f}"
        out.print(f"{client} task {d['task']}: {d['action']} (received {d['received_loss']:.4f}, personal {personal}, "
                  f"margin {d['margin']})")


@app.command(epilog=EXIT_CODES_HELP)
@user_errors
def distill(client: str = ClientOpt, round_: Optional[int] = SiteRoundOpt, workspace: Path = WorkspaceOpt,
            set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """TAP after the last round: fine-tune the final federated adapter (teacher), distil it into the personal one."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.steps.tap import distill as run

    ws = open_workspace(workspace, set_)
    results = run(ws, client, site_round(ws, client, round_))
    if json_out:
        emit_json(results)
        return
    for r in results:
        out.print(f"{client} task {r['task']}: {r['steps']} distillation steps, KL to teacher "
                  f"{r['kl_before']:.4f} -> {r['kl_after']:.4f}")
