"""A whole federation in one process: every client, every round, one or several strategies.

It calls the same library functions as the subcommands (site.finetune / taskvec / evaluate,
coordinator.similarity / aggregate) and writes the same files, so every intermediate file can be
inspected. Layout, beside the workspace's own fedbip.yaml and data:

    runs/simulate.json           what was asked, and the sha256 of fedbip.yaml it was asked for
    runs/results.json            scores per strategy, round and client (the task type's metric names in
                                 workspace/task_types.py: accuracy, macro-F1 and loss for classification;
                                 exact match, token F1 and response loss for causal-lm)
    runs/<strategy>/fedbip.yaml  the workspace's config with aggregation.strategy set (paths adjusted)
    runs/<strategy>/rounds/T/... the usual round files, plus evaluation.json

The files are the state: a round is complete when its evaluation.json, weights.json and every
client's next start adapter exist, so a stopped run continues from its last complete round (and
finetune skips clients already trained from the same start adapter).

Training is reused between strategies only where it is provably identical: same start adapter
bytes (sha256), same client, round, data, model and training settings (hence the same seed), and the
same proximal pull the strategy asks of a site. That covers round 0 for every strategy but fedamp,
and all of `fedavg-ft`'s training, which is fedavg's.

What a client does with the adapter it receives before it is evaluated is the strategy's own
declaration (`Strategy.after_receive`): use it as it is, fine-tune it (`fedavg-ft`), or run TAP's
gate and distillation (`tap`, `fedbip-tap`).

With `eval_workers` (the demo: 2), evaluations run on that many threads beside the training, each
with its own copy of the adapter layers over the same frozen base tensors, and every torch op runs on
one thread: the cores stay busy with whole evaluations instead of waiting on each other inside small
matmuls (issue 21). Nothing else changes: each evaluation reads an adapter folder that is final when
it is queued, training reseeds itself, and results, metrics.jsonl lines and evaluation.json are
written by the main thread in the order of a run without workers. TAP's evaluations stay inline (its
personal adapter folder is rewritten every round).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import yaml

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.adapter import read_adapter
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.manifest import record_step
from fedbip_cli.core.files.regular import parse_json, read_text
from fedbip_cli.core.strategies.registry import CATALOGUE, strategy_class
from fedbip_cli.errors import UserError
from fedbip_cli.steps import coordinator, site, tap
from fedbip_cli.workspace.config import CONFIG_FILE, parse_config
from fedbip_cli.workspace.layout import Workspace, read_json
from fedbip_cli.workspace.task_types import CLASSIFICATION_METRICS, task_type

RUNS = "runs"
STATE_FILE = "simulate.json"
RESULTS_FILE = "results.json"
EVAL_FILE = "evaluation.json"
LOWER_IS_BETTER = {"loss"}
ADAPTER_EVALUATED = {"evaluate": "personalized adapter", "finetune": "locally fine-tuned received adapter",
                     "tap": "TAP personal adapter"}
"""evaluation.json's `adapter`: what was evaluated, by the strategy's `after_receive`."""


def all_strategies() -> list[str]:
    """What `--strategies all` runs: every strategy but the TAP variants (their distillation is an ablation)."""
    return [n for n in CATALOGUE if strategy_class(n).after_receive != "tap"]


class Reporter:
    """Progress hooks; the default does nothing. `progress.RichReporter` draws bars."""

    def begin(self, strategies: list[str], rounds: int, clients: list[str]) -> None: ...

    def phase(self, strategy: str, t: int, what: str, client: str | None = None) -> None: ...

    def step(self, done: int, total: int, loss: float) -> None: ...

    def round_done(self, strategy: str, t: int, evaluation: dict[str, Any], resumed: bool) -> None: ...


@dataclass
class SimulationResult:
    root: Path
    strategies: list[str]
    rounds: int
    clients: list[str]
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """strategy -> one evaluation.json document per round."""
    seconds: float = 0.0
    trained: int = 0
    reused: int = 0

    def run_dir(self, strategy: str) -> Path:
        return self.root / RUNS / strategy

    metrics: tuple[str, ...] = CLASSIFICATION_METRICS
    """The metrics each evaluation reports per client, mean and worst (the task type's `metrics`)."""
    headline: str = "accuracy"
    """The one tables and plots lead with (the task type's `headline`)."""

    @property
    def primary(self) -> str:
        return self.headline

    @property
    def headline_first(self) -> tuple[str, ...]:
        """`metrics` in the order tables and reports show them: the headline, then the others."""
        return (self.headline, *(m for m in self.metrics if m != self.headline))

    def mean(self, strategy: str, metric: str | None = None) -> list[float]:
        """The clients' mean of `metric` (default: the headline) after each round."""
        return [e[f"mean_{metric or self.primary}"] for e in self.evaluations[strategy]]

    def accuracy(self, strategy: str) -> list[float]:
        return self.mean(strategy, "accuracy")

    def to_json(self) -> dict[str, Any]:
        keys = ["round"] + [k for m in self.metrics for k in (f"mean_{m}", f"worst_{m}", m)]
        return {"strategies": self.strategies, "rounds": self.rounds, "clients": self.clients,
                "metrics": list(self.metrics), "seconds": round(self.seconds, 1), "trainings": self.trained,
                "reused_trainings": self.reused,
                "results": {s: [{k: e[k] for k in keys if k in e} for e in evs] for s, evs in self.evaluations.items()}}


def parse_strategies(text: str | None, default: str) -> list[str]:
    """'a,b' -> ['a', 'b'] ('all' = every strategy but the TAP variants), checked against the registry."""
    if not text:
        return [default]
    names = [n for s in text.split(",") if s.strip() for n in (all_strategies() if s.strip() == "all" else [s.strip()])]
    for s in names:
        if s not in CATALOGUE:
            raise UserError(f"--strategies: unknown strategy {s!r} (choose from {', '.join(CATALOGUE)} or all)")
    if len(set(names)) != len(names):
        raise UserError(f"--strategies: a strategy is named twice: {text}")
    return names


def run_config(base: Workspace, strategy: str, labels: list[str], run_root: Path) -> str:
    """The strategy's fedbip.yaml text: the workspace's own, with relative paths re-rooted."""
    raw = yaml.safe_load(read_text(base.config_path)) or {}

    def rel(p: str) -> str:
        return p if Path(p).is_absolute() else os.path.relpath(base.root / p, run_root)

    raw.setdefault("aggregation", {})["strategy"] = strategy
    if labels:  # classification: every run uses the label map of the workspace
        raw.setdefault("task", {})["labels"] = list(labels)
    if (raw.get("model") or {}).get("path"):
        raw["model"]["path"] = rel(raw["model"]["path"])
    for files in (raw.get("clients") or {}).values():
        for split, p in list(files.items()):
            if split in ("train", "validation", "test") and isinstance(p, str):  # not lora_r / lora_alpha
                files[split] = rel(p)
    parse_config(raw, str(run_root / CONFIG_FILE))
    header = f"# written by `fedbip simulate` from {os.path.relpath(base.config_path, run_root)}: edit that file\n"
    return header + yaml.safe_dump(raw, sort_keys=False)


def prepare_runs(base: Workspace, strategies: list[str], rounds: int, restart: bool) -> dict[str, Workspace]:
    """Create (or check, when resuming) runs/ and one workspace per strategy."""
    runs = base.root / RUNS
    base.check_writes(runs / STATE_FILE, runs / RESULTS_FILE, folders=[runs, *(runs / s for s in strategies)])
    if restart and runs.exists():
        shutil.rmtree(runs)
    state_path = runs / STATE_FILE
    config_sha = base.config_sha256()
    state = read_json(state_path) if state_path.is_file() else {}
    if state and state.get("config_sha256") != config_sha:
        raise UserError(f"{base.config_path}: changed since {runs} was started; rerun with --restart "
                        f"(or use another workspace)")
    known = list(dict.fromkeys([*state.get("strategies", []), *strategies]))
    atomic.write_json(state_path, {"format": "fedbip.simulate/1", "config_sha256": config_sha, "strategies": known,
                                   "rounds": max(rounds, int(state.get("rounds", 0)))})
    # lazy: torch (~3 s)
    from fedbip_cli.client.tasks import make_task

    labels = site.ensure_labels(base) if make_task(base.config).uses_labels else []
    out = {}
    for s in strategies:
        root = runs / s
        text = run_config(base, s, labels, root)
        path = root / CONFIG_FILE
        if not path.is_file() or read_text(path) != text:
            atomic.write_text(path, text)
        out[s] = Workspace.open(root)
    return out


def training_setup(ws: Workspace) -> dict[str, Any]:
    """Everything finetune's result depends on besides the start adapter, client and round."""
    doc = ws.config.to_dict()
    doc.pop("aggregation")
    doc["proximal"] = site.site_proximal(ws)
    return doc


def reuse_training(ws: Workspace, client: str, t: int, donors: list[Workspace]) -> Path | None:
    """Copy another run's trained adapter when it was trained from the same start bytes, else None."""
    target = ws.trained_dir(t, client)
    if (target / site.TRAINING_INFO).is_file():
        return None  # finetune decides (skips when its start sha matches)
    start = read_adapter(ws.resolve_start(t, client))
    sha = sha256_file(start.weights_path)
    for donor in donors:
        src = donor.trained_dir(t, client)
        info_path = src / site.TRAINING_INFO
        if donor.root == ws.root or not info_path.is_file() or training_setup(donor) != training_setup(ws):
            continue
        info = read_json(info_path)
        if info.get("start_sha256") != sha:
            continue
        t0 = time.perf_counter()
        with atomic.atomic_dir(target) as tmp:
            for f in src.iterdir():
                if f.is_file() and f.name != site.TRAINING_INFO:
                    shutil.copyfile(f, tmp / f.name)
            info = info | {"start": str(start.folder), "reused_from": str(src)}
            (tmp / site.TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        record_step(ws.round_dir(t), f"finetune/{client}", inputs={"start": start.weights_path},
                    outputs={"trained": target}, config_sha256=ws.config_sha256(),
                    seconds=time.perf_counter() - t0, extra={"reused_from": str(src)})
        return src
    return None


def round_complete(ws: Workspace, t: int) -> bool:
    return ((ws.round_dir(t) / EVAL_FILE).is_file() and (ws.round_dir(t) / "weights.json").is_file()
            and all(ws.start_dir(t + 1, c).is_dir() for c in ws.config.clients))


class Simulation:
    """One simulate call: the runs, the shared runtime, counters."""

    def __init__(self, base: Workspace, runs: dict[str, Workspace], reporter: Reporter, plots: bool,
                 eval_workers: int = 0) -> None:
        self.base, self.runs, self.reporter, self.plots = base, runs, reporter, plots
        self.runtime = site.SiteRuntime(base)
        self._runtimes: dict[str, site.SiteRuntime] = {}
        self.clients = list(base.config.clients)
        spec = task_type(base.config.task.type)
        self.metrics, self.headline = spec.metrics, spec.headline
        self.trained = self.reused = 0
        self.docs: dict[tuple[str, int], dict[str, Any]] = {}
        """evaluation.json's document of each (strategy, round) run or resumed so far."""
        self.pending: list[tuple[str, int, Future]] = []
        """Queued evaluations (strategy, round, future of evaluation.json's document), in run order."""
        self.pool: ThreadPoolExecutor | None = None
        self._slots: SimpleQueue = SimpleQueue()
        if eval_workers > 0:
            self._start_eval_workers(eval_workers)

    def _start_eval_workers(self, n: int) -> None:
        """Threads with one torch thread each, and one model (adapter layers over the shared frozen base)
        per worker, built here before any training (building seeds torch). Every test split is
        tokenized here too: a fast tokenizer must not run on two threads at once."""
        # lazy: torch (~3 s)
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)  # this thread's OpenMP setting; each worker sets its own
        for c in self.clients:
            self.runtime.split(c, "test")
        task = self.runtime.task
        for _ in range(n):
            rt = site.SiteRuntime(self.base, _task=task, _data=self.runtime._data)
            for c in self.clients:  # clients with their own LoRA rank get their model now, not on a worker
                rt.model_for(c)
            self._slots.put((rt.model, rt._models))
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="fedbip-eval", initializer=torch.set_num_threads,
                                       initargs=(1,))

    def close(self) -> None:
        if self.pool is not None:
            # lazy: torch (~3 s)
            import torch

            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self._threads)

    def rt(self, strategy: str) -> site.SiteRuntime:
        if strategy not in self._runtimes:
            self._runtimes[strategy] = self.runtime.sharing(self.runs[strategy])
        return self._runtimes[strategy]

    def train(self, strategy: str, client: str, t: int) -> dict[str, Any]:
        """finetune, reusing another run's identical training when there is one."""
        ws = self.runs[strategy]
        if t == 0:
            site.make_initial(ws, self.rt(strategy))
        if reuse_training(ws, client, t, list(self.runs.values())):
            self.reused += 1
        self.reporter.phase(strategy, t, "finetune", client)
        info = site.finetune(ws, client, t, runtime=self.rt(strategy), on_step=self.reporter.step)
        self.trained += not info.get("skipped")
        return info

    def run_round(self, strategy: str, t: int, last: bool) -> None:
        """Round t of one strategy; its evaluation.json document goes to `docs` (with workers: once done)."""
        ws = self.runs[strategy]
        path = ws.round_dir(t) / EVAL_FILE
        if round_complete(ws, t):
            doc = read_json(path)
            self.reporter.round_done(strategy, t, doc, resumed=True)
            self.docs[strategy, t] = doc
            return
        for c in self.clients:
            self.train(strategy, c, t)
            self.reporter.phase(strategy, t, "taskvec", c)
            site.taskvec(ws, c, t)
        self.reporter.phase(strategy, t, "similarity")
        coordinator.similarity(ws, t, plot=self.plots and last)
        self.reporter.phase(strategy, t, "aggregate")
        coordinator.aggregate(ws, t)
        if self.pool is not None and strategy_class(strategy).after_receive != "tap":
            self.pending.append((strategy, t, self.pool.submit(self._evaluation_doc, strategy, t,
                                                               self._received(strategy, t))))
            self.finish(block=False)
            return
        doc = self.evaluate(strategy, t, last)
        atomic.write_json(path, doc)
        self.reporter.round_done(strategy, t, doc, resumed=False)
        self.docs[strategy, t] = doc

    def _received(self, strategy: str, t: int) -> dict[str, Path | None]:
        """On the main thread: what each client evaluates after round t (fine-tuning it first for `finetune`)."""
        ws = self.runs[strategy]
        finetune = strategy_class(strategy).after_receive == "finetune"
        adapters: dict[str, Path | None] = {}
        for c in self.clients:
            if finetune:  # the local fine-tune of the received adapter is round t+1's training
                self.train(strategy, c, t + 1)
            adapters[c] = ws.trained_dir(t + 1, c) if finetune else None
        return adapters

    def _evaluation_doc(self, strategy: str, t: int, adapters: dict[str, Path | None]) -> dict[str, Any]:
        """On a worker: every client's record (not logged yet), with a worker's own model."""
        model, models = self._slots.get()
        try:
            rt = site.SiteRuntime(self.runs[strategy], _model=model, _task=self.runtime.task, _models=models,
                                  _data=self.runtime._data)
            records = {c: site.evaluate(self.runs[strategy], c, t + 1, adapter=a, runtime=rt, log=False)
                       for c, a in adapters.items()}
        finally:
            self._slots.put((model, models))
        return self.evaluation_doc(strategy, t, records)

    def finish(self, block: bool) -> None:
        """Log and write the queued evaluations that are done, in run order (all of them when `block`)."""
        while self.pending and (block or self.pending[0][2].done()):
            strategy, t, future = self.pending.pop(0)
            doc = future.result()
            ws, records = self.runs[strategy], doc.pop("_records")
            for c in self.clients:
                site.log_evaluation(ws, records[c])
            atomic.write_json(ws.round_dir(t) / EVAL_FILE, doc)
            self.reporter.round_done(strategy, t, doc, resumed=False)
            self.docs[strategy, t] = doc

    def evaluate(self, strategy: str, t: int, last: bool = False) -> dict[str, Any]:
        """Each client's test metrics after round t: its adapter for round t+1, after what the strategy's
        `after_receive` asks (finetune: fine-tuned first; tap: the personal adapter after the gate, and
        after distillation in the last round)."""
        ws, per_client = self.runs[strategy], {}
        after = strategy_class(strategy).after_receive
        for c in self.clients:
            adapter = None
            if after == "finetune":  # the local fine-tune of the received adapter is round t+1's training
                self.train(strategy, c, t + 1)
                adapter = ws.trained_dir(t + 1, c)
            elif after == "tap":
                adapter = self.personalize(strategy, c, t + 1, last)
            self.reporter.phase(strategy, t, "evaluate", c)
            per_client[c] = site.evaluate(ws, c, t + 1, adapter=adapter, runtime=self.rt(strategy))
        doc = self.evaluation_doc(strategy, t, per_client)
        del doc["_records"]
        return doc

    def evaluation_doc(self, strategy: str, t: int, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """evaluation.json of round t from each client's `evaluate` record (kept under `_records`)."""
        after = strategy_class(strategy).after_receive
        per_client = {c: {k: rec[k] for k in (*self.metrics, "examples")} for c, rec in records.items()}
        doc = {"round": t, "evaluated_adapter_round": t + 1, "strategy": strategy,
               "adapter": ADAPTER_EVALUATED[after], "primary": self.headline}
        for m in self.metrics:  # mean_<m>, worst_<m> (highest loss, lowest score) and <m> per client
            values = {c: float(v[m]) for c, v in per_client.items()}
            worst = max if m in LOWER_IS_BETTER else min
            doc |= {f"mean_{m}": sum(values.values()) / len(values), f"worst_{m}": worst(values.values()), m: values}
        return doc | {"metrics": per_client, "_records": records}

    def personalize(self, strategy: str, client: str, t: int, last: bool) -> Path:
        """TAP at the client: gate the adapter received for round t; after the last round, distil."""

        ws, rt = self.runs[strategy], self.rt(strategy)
        decisions_log = tap.personal_root(ws, client) / "decisions.jsonl"
        done = ([parse_json(line, decisions_log) for line in read_text(decisions_log).splitlines()]
                if decisions_log.is_file() else [])
        if not any(d["stage"] == "accept" and d["round"] == t for d in done):  # resumed runs gate once
            self.reporter.phase(strategy, t - 1, "accept", client)
            tap.accept(ws, client, t, runtime=rt)
        if last and ws.config.tap.distill and not any(d["stage"] == "distill" and d["round"] == t for d in done):
            self.reporter.phase(strategy, t - 1, "distill", client)
            tap.distill(ws, client, t, runtime=rt)
        return tap.personal_adapter(ws, client)


def simulate(root: str | Path, strategies: list[str] | None = None, rounds: int = 3, *, restart: bool = False,
             reporter: Reporter | None = None, plots: bool = True, eval_workers: int = 0) -> SimulationResult:
    """Run (or resume) `rounds` rounds of every strategy on the workspace at `root`; `eval_workers` > 0 runs
    evaluations on that many threads beside the training (module docstring)."""
    t0 = time.perf_counter()
    base = Workspace.open(root)
    cfg = base.config
    strategies = strategies or [cfg.aggregation.strategy]
    parse_strategies(",".join(strategies), cfg.aggregation.strategy)
    if rounds < 1:
        raise UserError(f"--rounds: must be at least 1, got {rounds}")
    if len(cfg.clients) < 2:
        raise UserError(f"{base.config_path}: a federation needs at least 2 clients, found {len(cfg.clients)}")
    for name, cc in cfg.clients.items():
        if cc.test is None:
            raise UserError(f"{base.config_path}: clients.{name}.test is not set; simulate evaluates on it")
    reporter = reporter or Reporter()
    if eval_workers < 0:
        raise UserError(f"eval_workers: must be 0 or more, got {eval_workers}")
    runs = prepare_runs(base, strategies, rounds, restart)
    reporter.begin(strategies, rounds, list(cfg.clients))
    sim = Simulation(base, runs, reporter, plots, eval_workers)
    result = SimulationResult(base.root, strategies, rounds, sim.clients, metrics=sim.metrics,
                              headline=sim.headline)
    try:
        for t in range(rounds):  # round-major: every strategy reaches round t before any starts t+1
            for s in strategies:
                sim.run_round(s, t, last=t == rounds - 1)
        sim.finish(block=True)
    finally:
        sim.close()
    result.evaluations = {s: [sim.docs[s, t] for t in range(rounds)] for s in strategies}
    result.seconds, result.trained, result.reused = time.perf_counter() - t0, sim.trained, sim.reused
    atomic.write_json(base.root / RUNS / RESULTS_FILE, result.to_json())
    return result
