"""`fedbip demo`: the embedded defaults. Packaged models, packaged BBC News, every strategy but the TAP
variants, in the regime FedBip is for; `benchmarks/personalization.py` runs a regime over several seeds.

limited-data (the default) and data-rich: all-MiniLM-L6-v2 classifying BBC topics. Their federation was
fixed from the paper's premise before any of its results were looked at, and is the same for every
strategy (only aggregation differs):
- limited data: 16 training examples per client (about 3 per topic), so local training alone
  cannot learn much;
- related and conflicting clients: two interest-conflict groups of 4 clients; within a group clients
  share the labelling (with Dirichlet(1.0) label skew), group 1 reads every topic as the next one,
  so averaging across groups teaches contradictory labels;
- 100 test examples per client (800 per evaluation): the binomial standard error of a mean accuracy
  near 0.7 is about 1.6 points, and strategies are compared on the same test examples.
Sized for a 3-minute budget on 2 idle CPU cores (32-token inputs: title and first words; evaluations on
2 threads beside the training); docs/results.md has the time measured.

instructions: the paper's NLP experiment in miniature (INSTRUCTIONS below has its premise).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedbip_cli.core.files.regular import read_json
from fedbip_cli.datasets.bbc import load_articles, load_bbc
from fedbip_cli.errors import UserError
from fedbip_cli.sim.instructions import InstructionSpec, write_instruction_federation
from fedbip_cli.sim.partition import (
    PARTITION_FILE,
    PartitionSpec,
    read_groups,
    write_federation,
)
from fedbip_cli.sim.report import write_report
from fedbip_cli.sim.simulate import Reporter, SimulationResult, all_strategies, simulate


@dataclass(frozen=True)
class Regime:
    """A federation design: how BBC News is split into clients, and the training settings of every strategy."""

    name: str
    spec: PartitionSpec | InstructionSpec
    """Topic classification with conflict groups (PartitionSpec), or one instruction task per client."""
    settings: dict[str, Any] = field(hash=False)
    chars: int
    """Characters of each article read (classification): more than max_length tokens need."""
    premise: str
    eval_workers: int = 0
    """Threads that evaluate beside the training (simulate's eval_workers); results do not depend on it."""
    rounds: int = 3
    """The rounds the regime is sized for (`fedbip demo`'s default)."""

    def describe(self) -> str:
        s = self.spec
        if isinstance(s, InstructionSpec):
            return (f"BBC News as Flan-style instruction tasks ({', '.join(s.tasks)}), {s.clients} clients, one task "
                    f"each, {s.clients // len(s.tasks)} per task, {s.train} training and {s.test} test examples per "
                    f"client; packaged SmolLM2-135M-Instruct with LoRA. {self.premise}")
        return (f"BBC News, {s.clients} clients in {s.groups} interest-conflict groups (group 1 reads every topic as "
                f"the next one; Dirichlet alpha {s.alpha} label skew within), {s.train} training and {s.test} test "
                f"examples per client; packaged all-MiniLM-L6-v2 with LoRA. {self.premise}")


LIMITED = Regime(
    "limited-data",
    PartitionSpec(clients=8, alpha=1.0, groups=2, train=16, validation=0, test=100, seed=0),
    {"model.max_length": 32, "training.epochs": 2.0, "training.batch_size": 8,
     "training.learning_rate": 1.0e-3, "training.head_learning_rate": 1.0e-2,
     "training.threads": 1},  # batches of 8 x 32 tokens: a second thread costs CPU and saves no time
    chars=200,
    premise="The paper's regime: few examples per client, related clients to learn from and conflicting ones "
            "to keep away from.",
    eval_workers=2)  # 144 evaluations of 100 examples: most of the demo's CPU time (docs/results.md, Demo)
DATA_RICH = Regime(
    "data-rich",
    PartitionSpec(clients=10, alpha=0.5, groups=2, train=64, validation=0, test=100, seed=0),
    {"model.max_length": 48, "training.epochs": 1.0, "training.batch_size": 16,
     "training.learning_rate": 1.0e-3, "training.head_learning_rate": 1.0e-2},
    chars=300,
    premise="Enough data per client that local training alone does well: the federation has little to add.")
SMOLLM2_CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
"""SmolLM2-Instruct's chat format for one user turn (its template without the default system prompt); the
response ends with its EOS, <|im_end|>, so training and generation see what the model was tuned on."""
INSTRUCTIONS = Regime(
    "instructions",
    InstructionSpec(tasks=["topic", "headline", "match"], clients=6, train=16, validation=0, test=16, seed=0),
    {"task.prompt_template": SMOLLM2_CHAT, "task.max_new_tokens": 16, "model.max_length": 128,
     "training.epochs": 1.0, "training.batch_size": 4, "training.learning_rate": 2.0e-3,
     "training.threads": 1},
    chars=0,
    premise=("The paper's NLP setting in miniature: one instruction task per client, two clients per task (a choice "
             "among five topics, headline writing, a yes/no headline match), few examples each (16: four optimizer "
             "steps of 4 per round, at a learning rate high enough to move a LoRA adapter in so few steps), so a "
             "client gains from the other client of its task and is pulled away by the four of other tasks; scored "
             "by ROUGE-L of greedy generations, as the paper. Sized for 10 minutes on 2 idle cores: one round (each "
             "client trains once from the shared initial adapter and is evaluated on what its strategy gives it back), "
             "16 test examples per client, at most 16 new tokens (headlines: about 8 tokens), 128-token sequences. "
             "Fixed before any result of it was seen (first with 2 rounds; cut to 1, still before any result, when "
             "one training took 88 s on the shared machine and 2 seeds of 2 rounds would not have finished)."),
    eval_workers=2,
    rounds=1)
REGIMES = {r.name: r for r in (LIMITED, DATA_RICH, INSTRUCTIONS)}
DEMO_REGIME = LIMITED
DEMO_SPEC = DEMO_REGIME.spec
DEMO_SETTINGS = DEMO_REGIME.settings


@dataclass
class DemoResult:
    result: SimulationResult
    report: Path
    figures: dict[str, Any]
    seconds: float


def build(out: Path, spec: PartitionSpec | InstructionSpec = DEMO_SPEC, settings: dict[str, Any] | None = None,
          chars: int = DEMO_REGIME.chars) -> None:
    """Write the federation into `out` unless the same one is already there (then it resumes)."""
    if (out / "fedbip.yaml").exists():  # written last by write_federation: the federation is complete
        doc_path = out / PARTITION_FILE
        if not doc_path.is_file() or read_json(doc_path).get("spec") != asdict(spec):
            raise UserError(f"{out}: holds another federation than this one; use another --out or remove it")
        return
    settings = DEMO_SETTINGS if settings is None else settings
    if isinstance(spec, InstructionSpec):
        write_instruction_federation(out, load_articles(), spec, settings=settings, force=True)
        return
    texts, labels, _ = load_bbc(max_chars=chars)
    write_federation(out, texts, labels, spec, settings=settings, force=True)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n examples."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def run_demo(out: str | Path, *, rounds: int | None = None, reporter: Reporter | None = None,
             restart: bool = False, regime: Regime = DEMO_REGIME) -> DemoResult:
    """Build (or resume) the federation of `regime`, run every strategy but the TAP variants for `rounds`
    (default: the regime's), write report.md."""
    t0 = time.perf_counter()
    out = Path(out)
    build(out, regime.spec, regime.settings, regime.chars)
    result = simulate(out, all_strategies(), rounds or regime.rounds, reporter=reporter, restart=restart,
                      plots=False, eval_workers=regime.eval_workers)
    seconds = time.perf_counter() - t0
    n_test = regime.spec.clients * regime.spec.test
    noise = (f"Noise: {n_test} test examples per evaluation; a mean accuracy near 0.7 has a binomial standard "
             f"error of {100 * binomial_se(0.7, n_test):.1f} points." if isinstance(regime.spec, PartitionSpec)
             else f"Noise: {n_test} generations per evaluation, {regime.spec.test} per client.")
    notes = [f"Regime {regime.name}: {regime.describe()}",
             "Same settings for every strategy: " + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                                                              for k, v in regime.settings.items()) + ".",
             f"{noise} One seed; benchmarks/personalization.py gives the seed-to-seed spread (docs/results.md).",
             "fedavg-ft: after each round every client fine-tunes the global adapter locally before evaluating.",
             f"{result.trained} local trainings run, {result.reused} reused where provably identical; "
             f"simulation {seconds:.0f} s."]
    report, figures = write_report(result, out, title=f"fedbip demo ({regime.name})", groups=read_groups(out),
                                   notes=notes)
    return DemoResult(result, report, figures, seconds)
