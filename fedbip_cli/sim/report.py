"""Results of a simulation as rich tables and as a report.md with plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.table import Table

from fedbip_cli.core.files import atomic
from fedbip_cli.sim.simulate import RUNS, SimulationResult


def summary_table(result: SimulationResult) -> Table:
    """Rows: strategies; columns: rounds; cells: mean / worst-client accuracy."""
    table = Table(title="test accuracy after each round: mean / worst client")
    table.add_column("strategy")
    for t in range(result.rounds):
        table.add_column(f"round {t}", justify="right")
    best = max(result.evaluations, key=lambda s: result.evaluations[s][-1]["mean_accuracy"])
    for s, evs in result.evaluations.items():
        name = f"[bold]{s}[/]" if s == best else s
        table.add_row(name, *(f"{e['mean_accuracy']:.3f} / {e['worst_accuracy']:.3f}" for e in evs))
    return table


def client_table(result: SimulationResult, t: int | None = None) -> Table:
    """Rows: clients; columns: strategies (fits a terminal with many clients); accuracy after round t."""
    t = result.rounds - 1 if t is None else t
    table = Table(title=f"test accuracy per client after round {t}")
    table.add_column("client")
    for s in result.strategies:
        table.add_column(s, justify="right")
    for c in result.clients:
        table.add_row(c, *(f"{result.evaluations[s][t]['accuracy'][c]:.2f}" for s in result.strategies))
    return table


def client_spread(evaluation: dict[str, Any]) -> tuple[float, float, float]:
    """(mean, standard error of the mean over clients, worst client) of one evaluation.json's accuracies."""
    acc = np.array(list(evaluation["accuracy"].values()), dtype=float)
    se = float(acc.std(ddof=1) / np.sqrt(acc.size)) if acc.size > 1 else float("nan")
    return float(acc.mean()), se, float(acc.min())


def spread_table(result: SimulationResult) -> Table:
    """Rows: strategies; after the last round: mean ± standard error over clients, and the worst client."""
    table = Table(title=f"test accuracy after round {result.rounds - 1}: mean ± s.e. over clients, worst client")
    for col in ("strategy", "mean ± s.e.", "worst"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for s, evs in result.evaluations.items():
        mean, se, worst = client_spread(evs[-1])
        table.add_row(s, f"{100 * mean:.1f} ± {100 * se:.1f}", f"{100 * worst:.1f}")
    return table


def group_similarity(matrix: np.ndarray, clients: Sequence[str], groups: dict[str, int]) -> tuple[float, float]:
    """Mean off-diagonal cosine within groups, and across groups."""
    g = np.array([groups[c] for c in clients])
    same = g[:, None] == g[None, :]
    off = ~np.eye(len(clients), dtype=bool)
    within, cross = matrix[same & off], matrix[~same]
    return (float(within.mean()) if within.size else float("nan"), float(cross.mean()) if cross.size else float("nan"))


def read_similarity(result: SimulationResult, strategy: str, t: int) -> tuple[list[str], np.ndarray]:
    doc = json.loads((result.run_dir(strategy) / "rounds" / f"{t:04d}" / "similarity.json").read_text())
    return doc["clients"], np.array(doc["similarity"])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_report(result: SimulationResult, out: Path, *, title: str, groups: dict[str, int] | None = None,
                 similarity_of: str | None = None, notes: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """report.md with the accuracy table and plots; returns its path and the key figures.

    The heatmap shows `similarity_of`'s last round (default: the first fedbip run, else the first run).
    """
    from fedbip_cli.plots import accuracy_curves, similarity_heatmap

    if similarity_of is None:
        similarity_of = next((s for s in result.strategies if s.startswith("fedbip")), result.strategies[0])
    if groups is not None and not set(result.clients) <= set(groups):
        groups = None  # partition.json describes other clients than these

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"mean_accuracy": {s: result.accuracy(s) for s in result.strategies}}
    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    rows = [[s, *(f"{e['mean_accuracy']:.3f} / {e['worst_accuracy']:.3f}" for e in evs)]
            for s, evs in result.evaluations.items()]
    md += ["## Test accuracy after each round (mean / worst client)", "",
           markdown_table(["strategy", *(f"round {t}" for t in range(result.rounds))], rows), ""]
    last_rows = []
    figures["last_round"] = {}
    for s, evs in result.evaluations.items():
        mean, se, worst = client_spread(evs[-1])
        figures["last_round"][s] = {"mean": mean, "se": se, "worst": worst}
        last_rows.append([s, f"{100 * mean:.1f} ± {100 * se:.1f}", f"{100 * worst:.1f}"])
    md += [f"## After round {result.rounds - 1}: accuracy (%), mean ± standard error over clients, worst client", "",
           markdown_table(["strategy", "mean ± s.e.", "worst client"], last_rows), ""]
    curves = accuracy_curves({s: result.accuracy(s) for s in result.strategies},
                             out / "accuracy.png", "mean test accuracy per round")
    if curves:
        md += ["![mean accuracy per round](accuracy.png)", ""]
    last = result.rounds - 1
    if similarity_of in result.strategies:
        clients, sim = read_similarity(result, similarity_of, last)
        order = sorted(range(len(clients)), key=lambda i: (groups or {}).get(clients[i], 0))
        names = [clients[i] for i in order]
        sim = sim[np.ix_(order, order)]
        md += [f"## Task-vector similarity, round {last} ({similarity_of} run)", ""]
        if groups:
            within, cross = group_similarity(sim, names, groups)
            figures |= {"within_group_similarity": within, "cross_group_similarity": cross}
            md += [f"Mean cosine within groups {within:.3f}, across groups {cross:.3f} "
                   f"(clients ordered by group).", ""]
        png = similarity_heatmap(sim, names, out / "similarity.png", f"task-vector cosine, round {last}")
        if png:
            md += ["![similarity](similarity.png)", ""]
    for t in reversed(range(result.rounds)):
        rows = [[c, *(f"{result.evaluations[s][t]['accuracy'][c]:.2f}" for s in result.strategies)]
                for c in result.clients]
        md += [f"## Per-client accuracy after round {t}", "", markdown_table(["client", *result.strategies], rows), ""]
    runs = os.path.relpath(result.root / RUNS, out)
    md += [f"Every round's files (adapters, task vectors, similarity, weights, evaluation): `{runs}/<strategy>/rounds/`.", ""]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(md))
    return path, figures
