"""Whole-federation commands: partition a corpus into clients, simulate strategies, the demo.

Each command is a thin wrapper over a library function; heavy modules are imported inside the body so
`fedbip --help` stays fast."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from fedbip_cli.cli.common import (
    JsonOpt,
    SetOpt,
    WorkspaceOpt,
    allow_out,
    app,
    console,
    emit_json,
    open_workspace,
    out,
    parse_sets,
    user_errors,
)
from fedbip_cli.core.strategies.registry import CATALOGUE
from fedbip_cli.errors import UserError


@app.command()
@user_errors
def simulate(workspace: Path = WorkspaceOpt,
             strategies: Optional[str] = typer.Option(None, help=f"Comma-separated strategies ({', '.join(CATALOGUE)}),"
                                                                 " or 'all' (all but the TAP variants); default: "
                                                                 "aggregation.strategy. See `fedbip strategies`."),
             rounds: int = typer.Option(3, "--rounds", "-n", min=1, help="Rounds to run (a rerun resumes)."),
             restart: bool = typer.Option(False, help="Delete runs/ and start over."),
             json_out: bool = JsonOpt) -> None:
    """Run the whole federation in one process -> runs/<strategy>/ (resumes a stopped run)."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.sim.progress import RichReporter
    from fedbip_cli.sim.report import client_table, summary_table, write_report
    from fedbip_cli.sim.simulate import RUNS, parse_strategies
    from fedbip_cli.sim.simulate import simulate as run

    ws = open_workspace(workspace)
    names = parse_strategies(strategies, ws.config.aggregation.strategy)
    with RichReporter(console, enabled=not json_out) as rep:
        res = run(workspace, names, rounds, restart=restart, reporter=rep)
    report, _ = write_report(res, workspace / RUNS, title=f"fedbip simulate: {workspace}",
                             groups=read_groups(workspace))
    if json_out:
        emit_json(res.to_json() | {"report": str(report)})
        return
    for metric in res.headline_first:  # accuracy, macro-F1, loss; causal-lm: token F1, exact match, response loss
        out.print(summary_table(res, metric))
    out.print(client_table(res))
    console.print(f"{res.seconds:.0f} s; report: {report}")


@app.command()
@user_errors
def partition(folder: Path = typer.Argument(..., help="Workspace folder to create."),
              input_: Optional[Path] = typer.Option(None, "--input", help="Labelled .jsonl/.csv file "
                                                                           "(default: the packaged BBC News corpus)."),
              corpus: str = typer.Option("bbc", help="Packaged corpus when no --input: bbc (topic classification) "
                                                     "or bbc-instructions (Flan-style instruction tasks, one per "
                                                     "client; causal-lm)."),
              tasks: Optional[str] = typer.Option(None, help="bbc-instructions: comma-separated tasks (default: "
                                                             "topic,headline,match,opening)."),
              clients: Optional[int] = typer.Option(None, help="Number of clients (default: 10; bbc-instructions "
                                                               "8, spread over the tasks, at least 2 each)."),
              alpha: Optional[float] = typer.Option(None, help="Dirichlet label skew (smaller: more skewed); 0 = IID "
                                                               "(default 0.5)."),
              classes_per_client: Optional[int] = typer.Option(None, help="Classes each client sees."),
              groups: Optional[int] = typer.Option(None, help="Interest-conflict groups (group g shifts every label "
                                                              "by g; default 1)."),
              train: int = typer.Option(100, help="Training examples per client."),
              validation: int = typer.Option(0, help="Validation examples per client."),
              test: int = typer.Option(50, help="Test examples per client."),
              seed: int = typer.Option(0, help="Seed of the partition."),
              set_: Optional[list[str]] = SetOpt,
              force: bool = typer.Option(False, help="Overwrite an existing fedbip.yaml.")) -> None:
    """Split a corpus into a federation of skewed, conflicting clients (data/ + fedbip.yaml)."""
    # lazy: `fedbip --help` imports this module (cli/app.py)
    import yaml

    settings = {k: yaml.safe_load(v) for k, v in parse_sets(set_).items()}
    if corpus not in ("bbc", "bbc-instructions"):
        raise UserError(f"--corpus: unknown corpus {corpus!r} (choose bbc or bbc-instructions)")
    if input_ is not None and corpus != "bbc":
        raise UserError("--corpus: names a packaged corpus, used when there is no --input")
    if corpus == "bbc-instructions":
        given = [f"--{n}" for n, v in (("alpha", alpha), ("classes-per-client", classes_per_client),
                                       ("groups", groups)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)}: not for --corpus bbc-instructions (one task per client)")
        partition_instructions(folder, tasks, clients, train, validation, test, seed, settings, force)
        return
    if tasks is not None:
        raise UserError("--tasks: only for --corpus bbc-instructions")
    from rich.table import Table

    from fedbip_cli.sim.partition import PartitionSpec, write_federation

    if input_ is not None:
        from fedbip_cli.client.tasks.text.data import read_examples

        rows = read_examples(input_)
        texts, labels = [r.text for r in rows], [r.label for r in rows]
    else:
        from fedbip_cli.datasets.bbc import load_bbc

        texts, labels, _ = load_bbc()
    spec = PartitionSpec(clients=10 if clients is None else clients, alpha=0.5 if alpha is None else alpha or None,
                         classes_per_client=classes_per_client, groups=1 if groups is None else groups,
                         train=train, validation=validation, test=test, seed=seed)
    part = write_federation(allow_out(folder), texts, labels, spec, settings=settings, force=force)
    table = Table(title=f"{folder}: {len(part.clients)} clients")
    for col in ("client", "group", *(f"{s}" for s in ("train", "validation", "test")), "main labels"):
        table.add_column(col)
    for c in part.clients:
        top = sorted(zip(c.proportions, part.labels), reverse=True)[:2]
        table.add_row(c.name, str(c.group), *(str(len(c.splits[s])) for s in ("train", "validation", "test")),
                      ", ".join(f"{lab} {p:.0%}" for p, lab in top))
    out.print(table)
    console.print(f"wrote {folder / 'fedbip.yaml'}; run `fedbip simulate -w {folder} --strategies all`")


def partition_instructions(folder: Path, tasks: str | None, clients: int | None, train: int, validation: int,
                           test: int, seed: int, settings: dict, force: bool) -> None:
    """`partition --corpus bbc-instructions`: one Flan-style BBC task per client, a causal-lm workspace."""
    from rich.table import Table  # lazy: this module is imported by every --help, which loads no rich

    from fedbip_cli.datasets.bbc import load_articles
    from fedbip_cli.sim.instructions import InstructionSpec, write_instruction_federation

    spec = InstructionSpec(clients=8 if clients is None else clients, train=train, validation=validation,
                           test=test, seed=seed)
    if tasks is not None:
        spec.tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    doc = write_instruction_federation(allow_out(folder), load_articles(), spec, settings=settings, force=force)
    table = Table(title=f"{folder}: {spec.clients} clients, one instruction task each")
    for col in ("client", "task", "train", "validation", "test"):
        table.add_column(col)
    for name, c in doc["clients"].items():
        table.add_row(name, c["task"], *(str(getattr(spec, s)) for s in ("train", "validation", "test")))
    out.print(table)
    console.print(f"wrote {folder / 'fedbip.yaml'} (task.type causal-lm); run "
                  f"`fedbip simulate -w {folder} --strategies all`")


@app.command()
@user_errors
def demo(out_dir: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the federation and report."),
         rounds: Optional[int] = typer.Option(None, "--rounds", "-n", min=1,
                                              help="Rounds (default: the regime's; 3, instructions 1)."),
         regime: str = typer.Option("limited-data", help="limited-data (the demo: 16 examples per client), "
                                                         "data-rich (64 per client; slower), or instructions "
                                                         "(SmolLM2 on 4 instruction tasks, ROUGE-L; about 10 min)."),
         restart: bool = typer.Option(False, help="Delete earlier runs in the folder and start over.")) -> None:
    """BBC News, every strategy -> OUT/report.md: MiniLM, 8 clients with little data in two conflicting groups;
    or (--regime instructions) SmolLM2, one instruction task per client."""

    # lazy: `fedbip --help` imports this module (cli/app.py)
    from fedbip_cli.sim.demo import REGIMES, run_demo
    from fedbip_cli.sim.progress import RichReporter
    from fedbip_cli.sim.report import client_table, spread_table, summary_table

    if regime not in REGIMES:
        raise UserError(f"--regime: unknown regime {regime!r} (choose one of {', '.join(REGIMES)})")
    t0 = time.perf_counter()
    with RichReporter(console) as rep:
        res = run_demo(allow_out(out_dir), rounds=rounds, reporter=rep, restart=restart, regime=REGIMES[regime])
    out.print(summary_table(res.result))
    out.print(client_table(res.result))
    out.print(spread_table(res.result))
    f = res.figures
    if "within_group_similarity" in f:
        console.print(f"task-vector cosine (fedbip, last round): within groups {f['within_group_similarity']:.3f}, "
                      f"across groups {f['cross_group_similarity']:.3f}")
    console.print(f"done in {time.perf_counter() - t0:.0f} s; report: {res.report}")
