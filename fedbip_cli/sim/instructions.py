"""A federation of instruction tasks, one task per client (the paper's NLP setting), from BBC News.

Clients are split into contiguous blocks, one block per task (at least two clients each), so every
client has clients of its own task to learn from and clients of other tasks to keep away from. The
articles are shuffled once by the seed and dealt out in order, client by client and split by split, so
no article appears twice (across clients, splits and tasks: a "no" row of `match` takes a second
article for its wrong headline), and the same spec gives the same federation. Rows are the Flan-style
ones of datasets/bbc_instructions.py; partition.json records which articles each split holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedbip_cli.core.files import atomic
from fedbip_cli.datasets.bbc import Article
from fedbip_cli.datasets.bbc_instructions import TASKS, make_row
from fedbip_cli.errors import UserError
from fedbip_cli.sim.partition import PARTITION_FILE, SPLITS, check_new_workspace, group_of, write_client_rows
from fedbip_cli.steps.site import init_workspace

CORPUS = "bbc-instructions"
TASK_FIELD = "task"
"""The row field naming each example's task (task.task_field), for per-task metrics."""


@dataclass
class InstructionSpec:
    """Which tasks, how many clients and examples; the same spec and seed give the same federation."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    clients: int = 8
    train: int = 16
    validation: int = 0
    test: int = 25
    seed: int = 0

    def check(self, articles: int) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise UserError(f"--tasks: expected distinct tasks among {', '.join(TASKS)}, got {','.join(self.tasks)}")
        if self.clients < 2 * len(self.tasks):
            raise UserError(f"--clients: {len(self.tasks)} tasks need at least {2 * len(self.tasks)} clients "
                            f"(two per task), got {self.clients}")
        if min(self.train, self.validation, self.test) < 0 or self.train == 0:
            raise UserError("split sizes: train must be positive, validation and test non-negative")
        rows = self.train + self.validation + self.test
        need = sum(rows * TASKS[self.task_of(k)].articles_per_row for k in range(self.clients))
        if need > articles:
            raise UserError(f"partition: the splits need {need} articles, the corpus has {articles}; "
                            f"use fewer clients or smaller splits")

    def task_of(self, k: int) -> str:
        return self.tasks[group_of(k, self.clients, len(self.tasks))]

    def client_name(self, k: int) -> str:
        return f"{self.task_of(k)}-c{k:02d}"


def instruction_rows(articles: list[Article], spec: InstructionSpec) -> tuple[dict[str, dict[str, list[dict]]],
                                                                               dict[str, dict[str, list[int]]]]:
    """Each client's rows per split, and the article indices each split consumed."""
    spec.check(len(articles))
    topics = sorted({a.topic for a in articles})
    rng = np.random.default_rng(spec.seed)
    order = [int(i) for i in rng.permutation(len(articles))]
    rows: dict[str, dict[str, list[dict]]] = {}
    used: dict[str, dict[str, list[int]]] = {}
    for k in range(spec.clients):
        task, name = TASKS[spec.task_of(k)], spec.client_name(k)
        rows[name], used[name] = {}, {}
        for split in SPLITS:
            n = getattr(spec, split)
            coins = rng.permutation([i % 2 == 0 for i in range(n)])  # exactly balanced, in random order
            taken = order[:n * task.articles_per_row]
            del order[:n * task.articles_per_row]
            groups = [taken[j * task.articles_per_row:(j + 1) * task.articles_per_row] for j in range(n)]
            rows[name][split] = [make_row(task, [articles[i] for i in g], topics, bool(c))
                                 for g, c in zip(groups, coins)]
            used[name][split] = taken
    return rows, used


def write_instruction_federation(root: str | Path, articles: list[Article], spec: InstructionSpec, *,
                                 settings: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """data/<client>/<split>.jsonl, partition.json and a causal-lm fedbip.yaml with task.task_field set;
    returns partition.json's document."""
    root = Path(root)
    check_new_workspace(root, force)
    rows, used = instruction_rows(articles, spec)
    clients = write_client_rows(root, rows)
    doc = {"format": "fedbip.partition/1", "corpus": CORPUS, "tasks": list(spec.tasks), "spec": asdict(spec),
           "clients": {spec.client_name(k): {"group": spec.tasks.index(spec.task_of(k)), "task": spec.task_of(k),
                                             "articles": used[spec.client_name(k)]} for k in range(spec.clients)}}
    atomic.write_json(root / PARTITION_FILE, doc)
    base = {"task.type": "causal-lm", "task.task_field": TASK_FIELD}
    init_workspace(root, clients=clients, settings=base | (settings or {}), force=force)  # last: marks done
    return doc
