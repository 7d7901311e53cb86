"""The `fedbip` command: thin typer wrappers over the library functions.

Commands import their heavy modules inside the function body, so `fedbip --help` and the coordinator
commands (similarity, aggregate) never import torch, transformers or peft.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedbip_cli import __version__
from fedbip_cli.cli.common import (
    ClientOpt,
    JsonOpt,
    RoundOpt,
    SetOpt,
    SpaceOpt,
    WorkspaceOpt,
    console,
    emit_json,
    open_workspace,
    out,
    parse_sets,
    user_errors,
)
from fedbip_cli.errors import UserError

app = typer.Typer(
    name="fedbip",
    help="Bi-level personalized federated fine-tuning of foundation models (FedBip). Each step reads and "
         "writes files in a workspace, so a round can run by hand, from cron or across sites.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedbip {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """fedbip command line."""


@app.command()
@user_errors
def init(
    folder: Path = typer.Argument(..., help="Workspace folder to create."),
    model: Optional[str] = typer.Option(None, help="Base model folder (default: the packaged all-MiniLM-L6-v2)."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated label set, in order."),
    force: bool = typer.Option(False, help="Overwrite an existing fedbip.yaml."),
) -> None:
    """Create a workspace: a commented fedbip.yaml to edit, and the rounds/ folder."""
    from fedbip_cli.steps.site import init_workspace

    path = init_workspace(folder, model_path=model, labels=labels.split(",") if labels else None, force=force)
    console.print(f"wrote {path}: add your clients and their data files, then run `fedbip finetune`")


@app.command("labels")
@user_errors
def labels_cmd(workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """Collect the label map (labels.json) from every client's training file present here."""
    from fedbip_cli.steps.site import collect_labels

    labels = collect_labels(open_workspace(workspace))
    emit_json(labels) if json_out else console.print(f"labels.json: {', '.join(labels)}")


@app.command()
@user_errors
def initial(workspace: Path = WorkspaceOpt, set_: Optional[list[str]] = SetOpt,
            force: bool = typer.Option(False, help="Recreate it even if it exists.")) -> None:
    """Create the shared initial adapter (round 0's start): seeded, identical at every site."""
    from fedbip_cli.steps.site import make_initial

    path = make_initial(open_workspace(workspace, set_), force=force)
    console.print(f"initial adapter: {path}")


@app.command()
@user_errors
def finetune(client: str = ClientOpt, round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
             set_: Optional[list[str]] = SetOpt, force: bool = typer.Option(False, help="Retrain even if done."),
             json_out: bool = JsonOpt) -> None:
    """Fine-tune the client's start adapter of the round on its training data -> rounds/T/trained/<client>."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fedbip_cli.steps.site import finetune as run

    ws = open_workspace(workspace, set_)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=console,
                  disable=json_out, transient=False) as bar:
        task = bar.add_task(f"finetune {client} r{round_}", total=None, loss=float("nan"))

        def step(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, loss=loss)

        info = run(ws, client, round_, force=force, on_step=step)
    if json_out:
        emit_json(info)
    elif info.get("skipped"):
        console.print(f"{client} round {round_}: already trained from this start adapter (use --force to redo)")
    else:
        console.print(f"{client} round {round_}: {info['steps']} steps, loss {info['final_loss']:.4f}, "
                      f"{info['examples_per_second']:.1f} examples/s -> {ws.trained_dir(round_, client)}")


@app.command()
@user_errors
def taskvec(client: str = ClientOpt, round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
            space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Write the client's task vector (trained - start) -> rounds/T/deltas/<client>.safetensors."""
    from fedbip_cli.steps.site import taskvec as run

    path = run(open_workspace(workspace, set_), client, round_, space=space)
    emit_json({"client": client, "round": round_, "taskvec": str(path)}) if json_out else console.print(f"wrote {path}")


def _matrix_table(title: str, clients: list[str], matrix):
    from rich.table import Table  # imported on use: `fedbip --help` stays fast

    table = Table(title=title, show_lines=False)
    table.add_column("")
    for c in clients:
        table.add_column(c, justify="right")
    for c, row in zip(clients, matrix):
        table.add_row(c, *(f"{v:.3f}" for v in row))
    return table


@app.command()
@user_errors
def similarity(round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
               inputs: Optional[Path] = typer.Option(None, help="Folder of <client>.safetensors task vectors "
                                                                "(default: rounds/T/deltas)."),
               layer_wise: bool = typer.Option(False, "--layer-wise", help="Also one matrix per module."),
               space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Pairwise cosine similarity of the round's task vectors -> similarity.json/.csv/.png."""
    from fedbip_cli.steps.coordinator import similarity as run

    res = run(open_workspace(workspace, set_), round_, inputs, layer_wise=layer_wise, space=space)
    if json_out:
        emit_json(res.to_json())
        return
    out.print(_matrix_table(f"task-vector cosine, round {round_}", res.clients, res.matrix))
    if res.zero_clients:
        console.print(f"all-zero task vectors (cosine 0 to others): {', '.join(res.zero_clients)}")
    console.print(f"wrote {', '.join(res.files.values())}")


@app.command()
@user_errors
def aggregate(round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
              inputs: Optional[Path] = typer.Option(None, help="Folder of task vectors (default: rounds/T/deltas)."),
              strategy: Optional[str] = typer.Option(None, help="Strategy (default: aggregation.strategy); "
                                                                "see `fedbip strategies`."),
              min_clients: int = typer.Option(2, "--min-clients", min=1,
                                              help="Aggregate once this many task vectors have arrived; "
                                                   "configured clients without one keep their adapter."),
              force: bool = typer.Option(False, help="Redo it even if this aggregation already ran intact."),
              space: Optional[str] = SpaceOpt, set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """One personalized adapter per client for round T+1, the global adapter and weights.json."""
    from fedbip_cli.steps.coordinator import aggregate as run

    res = run(open_workspace(workspace, set_), round_, inputs, strategy=strategy, min_clients=min_clients,
              space=space, force=force)
    if json_out:
        emit_json(res.to_json())
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


@app.command("eval")
@user_errors
def eval_cmd(client: str = ClientOpt, round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
             adapter: Optional[Path] = typer.Option(None, help="Adapter folder (default: the client's adapter "
                                                               "for this round)."),
             split: str = typer.Option("test", help="test | validation | train"),
             set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """Metrics on the client's held-out data (accuracy, macro-F1, loss; causal-lm: loss, perplexity, exact
    match, token F1); appended to metrics.jsonl."""
    from fedbip_cli.steps.site import evaluate

    if split not in ("test", "validation", "train"):
        raise UserError(f"--split: must be test, validation or train, got {split!r}")
    rec = evaluate(open_workspace(workspace, set_), client, round_, adapter=adapter, split=split)
    if json_out:
        emit_json(rec)
    else:
        shown = [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("loss", "loss"), ("perplexity", "perplexity"),
                 ("exact_match", "exact match"), ("token_f1", "token F1")]  # those of the task type
        out.print(f"{client} round {round_} {split}: " + "  ".join(f"{name} {rec[k]:.4f}" for k, name in shown if k in rec)
                  + f"  ({rec['examples']} examples)")


@app.command()
@user_errors
def accept(client: str = ClientOpt, round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
           margin: Optional[float] = typer.Option(None, help="Replace only if loss(received) + margin < "
                                                             "loss(personal) (default: tap.margin / tap.margins)."),
           set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """TAP gate: adopt the adapter received for the round as the personal adapter only where it clearly helps."""
    from fedbip_cli.steps.tap import accept as run

    decisions = run(open_workspace(workspace, set_), client, round_, margin=margin)
    if json_out:
        emit_json(decisions)
        return
    for d in decisions:
        personal = "none" if d["personal_loss"] is None else f"{d['personal_loss']:.4f}"
        out.print(f"{client} task {d['task']}: {d['action']} (received {d['received_loss']:.4f}, personal {personal}, "
                  f"margin {d['margin']})")


@app.command()
@user_errors
def simulate(workspace: Path = WorkspaceOpt,
             strategies: Optional[str] = typer.Option(None, help="Comma-separated strategies, or 'all' "
                                                                 "(default: aggregation.strategy)."),
             rounds: int = typer.Option(3, "--rounds", "-n", min=1, help="Rounds to run (a rerun resumes)."),
             restart: bool = typer.Option(False, help="Delete runs/ and start over."),
             json_out: bool = JsonOpt) -> None:
    """Run the whole federation in one process -> runs/<strategy>/ (resumes a stopped run)."""
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.sim.progress import RichReporter
    from fedbip_cli.sim.report import client_table, summary_table, write_report
    from fedbip_cli.sim.simulate import RUNS, parse_strategies
    from fedbip_cli.sim.simulate import simulate as run

    ws = open_workspace(workspace)
    names = parse_strategies(strategies, ws.config.aggregation.strategy)
    with RichReporter(console, enabled=not json_out) as rep:
        res = run(workspace, names, rounds, restart=restart, reporter=rep)
    report, _ = write_report(res, workspace / RUNS, title=f"fedbip simulate: {workspace}", groups=read_groups(workspace))
    if json_out:
        emit_json(res.to_json() | {"report": str(report)})
        return
    out.print(summary_table(res))
    out.print(client_table(res))
    console.print(f"{res.seconds:.0f} s; report: {report}")


@app.command()
@user_errors
def distill(client: str = ClientOpt, round_: int = RoundOpt, workspace: Path = WorkspaceOpt,
            set_: Optional[list[str]] = SetOpt, json_out: bool = JsonOpt) -> None:
    """TAP after the last round: fine-tune the final federated adapter (teacher), distil it into the personal one."""
    from fedbip_cli.steps.tap import distill as run

    results = run(open_workspace(workspace, set_), client, round_)
    if json_out:
        emit_json(results)
        return
    for r in results:
        out.print(f"{client} task {r['task']}: {r['steps']} distillation steps, KL to teacher "
                  f"{r['kl_before']:.4f} -> {r['kl_after']:.4f}")


@app.command()
@user_errors
def verify(round_: int = RoundOpt, workspace: Path = WorkspaceOpt, json_out: bool = JsonOpt) -> None:
    """Check a round folder against its manifest.json: every recorded input and output, by sha256."""
    from fedbip_cli.core.files.manifest import verify_round
    from fedbip_cli.errors import UserError
    from fedbip_cli.workspace.layout import Workspace

    report = verify_round(Workspace.open(workspace).round_dir(round_))
    problems = [p for ps in report.values() for p in ps]
    if json_out:
        emit_json({"round": round_, "ok": not problems, "steps": report})
    else:
        for step, ps in report.items():
            out.print(f"[{'red' if ps else 'green'}]{'FAIL' if ps else 'ok'}[/] {step}" + (f": {'; '.join(ps)}" if ps else ""))
    if problems:
        raise UserError(f"round {round_}: {len(problems)} problem(s): {problems[0]}")


@app.command()
@user_errors
def partition(folder: Path = typer.Argument(..., help="Workspace folder to create."),
              input_: Optional[Path] = typer.Option(None, "--input", help="Labelled .jsonl/.csv file "
                                                                           "(default: the packaged BBC News corpus)."),
              clients: int = typer.Option(10, help="Number of clients."),
              alpha: float = typer.Option(0.5, help="Dirichlet label skew (smaller: more skewed); 0 = IID."),
              classes_per_client: Optional[int] = typer.Option(None, help="Classes each client sees."),
              groups: int = typer.Option(1, help="Interest-conflict groups (group g shifts every label by g)."),
              train: int = typer.Option(100, help="Training examples per client."),
              validation: int = typer.Option(0, help="Validation examples per client."),
              test: int = typer.Option(50, help="Test examples per client."),
              seed: int = typer.Option(0, help="Seed of the partition."),
              set_: Optional[list[str]] = SetOpt,
              force: bool = typer.Option(False, help="Overwrite an existing fedbip.yaml.")) -> None:
    """Split a labelled corpus into a federation of skewed, conflicting clients (data/ + fedbip.yaml)."""
    import yaml
    from rich.table import Table

    from fedbip_cli.sim.partition import PartitionSpec, write_federation

    if input_ is not None:
        from fedbip_cli.client.tasks.text.data import read_examples

        rows = read_examples(input_)
        texts, labels = [r.text for r in rows], [r.label for r in rows]
    else:
        from fedbip_cli.datasets.bbc import load_bbc

        texts, labels, _ = load_bbc()
    settings = {k: yaml.safe_load(v) for k, v in parse_sets(set_).items()}
    spec = PartitionSpec(clients=clients, alpha=alpha or None, classes_per_client=classes_per_client, groups=groups,
                         train=train, validation=validation, test=test, seed=seed)
    part = write_federation(folder, texts, labels, spec, settings=settings, force=force)
    table = Table(title=f"{folder}: {len(part.clients)} clients")
    for col in ("client", "group", *(f"{s}" for s in ("train", "validation", "test")), "main labels"):
        table.add_column(col)
    for c in part.clients:
        top = sorted(zip(c.proportions, part.labels), reverse=True)[:2]
        table.add_row(c.name, str(c.group), *(str(len(c.splits[s])) for s in ("train", "validation", "test")),
                      ", ".join(f"{l} {p:.0%}" for p, l in top))
    out.print(table)
    console.print(f"wrote {folder / 'fedbip.yaml'}; run `fedbip simulate -w {folder} --strategies all`")


@app.command()
@user_errors
def demo(out_dir: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the federation and report."),
         rounds: int = typer.Option(3, "--rounds", "-n", min=1, help="Rounds (3 fits in 5 minutes on 2 cores)."),
         restart: bool = typer.Option(False, help="Delete earlier runs in the folder and start over.")) -> None:
    """MiniLM on BBC News, 10 skewed and conflicting clients, all six strategies -> OUT/report.md."""
    import time

    from fedbip_cli.sim.demo import run_demo
    from fedbip_cli.sim.progress import RichReporter
    from fedbip_cli.sim.report import client_table, summary_table

    t0 = time.perf_counter()
    with RichReporter(console) as rep:
        res = run_demo(out_dir, rounds=rounds, reporter=rep, restart=restart)
    out.print(summary_table(res.result))
    out.print(client_table(res.result))
    f = res.figures
    if "within_group_similarity" in f:
        console.print(f"task-vector cosine (fedbip, last round): within groups {f['within_group_similarity']:.3f}, "
                      f"across groups {f['cross_group_similarity']:.3f}")
    console.print(f"done in {time.perf_counter() - t0:.0f} s; report: {res.report}")


@app.command()
def strategies(json_out: bool = JsonOpt) -> None:
    """List the aggregation strategies."""
    from rich.table import Table

    from fedbip_cli.core.strategies import STRATEGIES

    if json_out:
        emit_json({n: c.summary for n, c in STRATEGIES.items()})
        return
    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("what it does")
    for n, c in STRATEGIES.items():
        table.add_row(n, c.summary)
    table.add_row("fedavg-ft", "fedavg, then each client fine-tunes the global adapter before evaluation")
    out.print(table)


def main() -> None:
    app()
