"""Results of a simulation as rich tables and as a report.md with plots.

The metrics are the task type's (workspace/task_types.py; `SimulationResult.metrics` and `.headline`):
classification runs report accuracy (headline), macro-F1 and loss; causal-lm runs ROUGE-L
(headline), ROUGE-1, ROUGE-2, exact match, token F1 and response loss.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.table import Table

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.regular import read_json
from fedbip_cli.plots import accuracy_curves, similarity_heatmap
from fedbip_cli.sim.simulate import LOWER_IS_BETTER, RUNS, SimulationResult
from fedbip_cli.workspace.task_types import METRIC_LABELS


def label(result: SimulationResult, metric: str) -> str:
    if metric == "loss" and "exact_match" in result.metrics:
        return "response loss"
    return METRIC_LABELS.get(metric, metric)


def mean_worst_rows(result: SimulationResult, metric: str) -> list[list[str]]:
    """Per strategy: 'mean / worst client' of `metric` after each round."""
    return [[s, *(f"{e[f'mean_{metric}']:.3f} / {e[f'worst_{metric}']:.3f}" for e in evs)]
            for s, evs in result.evaluations.items()]


def best_strategy(result: SimulationResult, metric: str) -> str:
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(result.evaluations, key=lambda s: result.evaluations[s][-1][f"mean_{metric}"])


def summary_table(result: SimulationResult, metric: str | None = None) -> Table:
    """Rows: strategies; columns: rounds; cells: mean / worst-client `metric` (default: the headline)."""
    metric = metric or result.primary
    table = Table(title=f"test {label(result, metric)} after each round: mean / worst client")
    table.add_column("strategy")
    for t in range(result.rounds):
        table.add_column(f"round {t}", justify="right")
    best = best_strategy(result, metric)
    for row in mean_worst_rows(result, metric):
        table.add_row(f"[bold]{row[0]}[/]" if row[0] == best else row[0], *row[1:])
    return table


def client_table(result: SimulationResult, t: int | None = None) -> Table:
    """Rows: clients; columns: strategies (fits a terminal with many clients); the headline after round t."""
    t = result.rounds - 1 if t is None else t
    metric = result.primary
    table = Table(title=f"test {label(result, metric)} per client after round {t}")
    table.add_column("client")
    for s in result.strategies:
        table.add_column(s, justify="right")
    for c in result.clients:
        table.add_row(c, *(f"{result.evaluations[s][t][metric][c]:.2f}" for s in result.strategies))
    return table


def client_spread(evaluation: dict[str, Any], metric: str = "accuracy") -> tuple[float, float, float]:
    """(mean, standard error of the mean over clients, worst client) of one evaluation.json's per-client
    `metric` (worst: the highest loss, the lowest score)."""
    values = np.array(list(evaluation[metric].values()), dtype=float)
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    worst = values.max() if metric in LOWER_IS_BETTER else values.min()
    return float(values.mean()), se, float(worst)


def spread_rows(result: SimulationResult, metric: str) -> list[list[str]]:
    """Per strategy after the last round: mean ± standard error over clients, and the worst client (scores
    in %, losses as they are)."""
    scale, digits = (1.0, 3) if metric in LOWER_IS_BETTER else (100.0, 1)
    rows = []
    for s, evs in result.evaluations.items():
        mean, se, worst = client_spread(evs[-1], metric)
        rows.append([s, f"{scale * mean:.{digits}f} ± {scale * se:.{digits}f}", f"{scale * worst:.{digits}f}"])
    return rows


def spread_table(result: SimulationResult) -> Table:
    """Rows: strategies; after the last round: the headline metric's mean ± s.e. over clients, worst client."""
    metric = result.primary
    table = Table(title=f"test {label(result, metric)} after round {result.rounds - 1}: mean ± s.e. over clients, "
                        f"worst client")
    for col in ("strategy", "mean ± s.e.", "worst"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for row in spread_rows(result, metric):
        table.add_row(*row)
    return table


def group_similarity(matrix: np.ndarray, clients: Sequence[str], groups: dict[str, int]) -> tuple[float, float]:
    """Mean off-diagonal cosine within groups, and across groups."""
    g = np.array([groups[c] for c in clients])
    same = g[:, None] == g[None, :]
    off = ~np.eye(len(clients), dtype=bool)
    within, cross = matrix[same & off], matrix[~same]
    return (float(within.mean()) if within.size else float("nan"), float(cross.mean()) if cross.size else float("nan"))


def read_similarity(result: SimulationResult, strategy: str, t: int) -> tuple[list[str], np.ndarray]:
    doc = read_json(result.run_dir(strategy) / "rounds" / f"{t:04d}" / "similarity.json")
    return doc["clients"], np.array(doc["similarity"])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_report(result: SimulationResult, out: Path, *, title: str, groups: dict[str, int] | None = None,
                 similarity_of: str | None = None, notes: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """report.md with the accuracy table and plots; returns its path and the key figures.

    The heatmap shows `similarity_of`'s last round (default: the first fedbip run, else the first run).
    """

    if similarity_of is None:
        similarity_of = next((s for s in result.strategies if s.startswith("fedbip")), result.strategies[0])
    if groups is not None and not set(result.clients) <= set(groups):
        groups = None  # partition.json describes other clients than these

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {f"mean_{m}": {s: result.mean(s, m) for s in result.strategies} for m in result.metrics}
    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    header = ["strategy", *(f"round {t}" for t in range(result.rounds))]
    for metric in result.headline_first:  # the headline first, with its plot; then the others
        name = label(result, metric)
        md += [f"## Test {name} after each round (mean / worst client)", "",
               markdown_table(header, mean_worst_rows(result, metric)), ""]
        png = "accuracy.png" if metric == "accuracy" else f"{metric}.png"
        if accuracy_curves({s: result.mean(s, metric) for s in result.strategies}, out / png,
                           f"mean test {name} per round", ylabel=f"mean {name}"):
            md += [f"![mean {name} per round]({png})", ""]
    metric = result.primary
    figures["last_round"] = {s: dict(zip(("mean", "se", "worst"), client_spread(evs[-1], metric)))
                             for s, evs in result.evaluations.items()}
    unit = "" if metric in LOWER_IS_BETTER else " (%)"
    md += [f"## After round {result.rounds - 1}: {label(result, metric)}{unit}, mean ± standard error over clients, "
           f"worst client", "",
           markdown_table(["strategy", "mean ± s.e.", "worst client"], spread_rows(result, metric)), ""]
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
        heatmap = similarity_heatmap(sim, names, out / "similarity.png", f"task-vector cosine, round {last}")
        if heatmap:
            md += ["![similarity](similarity.png)", ""]
    metric = result.primary
    for t in reversed(range(result.rounds)):
        rows = [[c, *(f"{result.evaluations[s][t][metric][c]:.2f}" for s in result.strategies)]
                for c in result.clients]
        md += [f"## Per-client {label(result, metric)} after round {t}", "",
               markdown_table(["client", *result.strategies], rows), ""]
    runs = os.path.relpath(result.root / RUNS, out)
    md += [f"Every round's files (adapters, task vectors, similarity, weights, evaluation): "
           f"`{runs}/<strategy>/rounds/`.", ""]
    path = out / "report.md"
    atomic.write_text(path, "\n".join(md))
    return path, figures
