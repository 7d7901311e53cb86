"""`fedbip demo`: the embedded default. Packaged MiniLM, packaged BBC News, 10 clients with Dirichlet
label skew in two interest-conflict groups, all six strategies, sized to finish in 5 minutes on 2 CPU
cores. Every strategy runs with the same settings (DEMO_SETTINGS); only aggregation differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedbip_cli.errors import UserError
from fedbip_cli.sim.partition import (
    PARTITION_FILE,
    PartitionSpec,
    read_groups,
    write_federation,
)
from fedbip_cli.sim.simulate import Reporter, SimulationResult, all_strategies, simulate

DEMO_SPEC = PartitionSpec(clients=10, alpha=0.5, groups=2, train=64, validation=0, test=40, seed=0)
DEMO_SETTINGS: dict[str, Any] = {
    "model.max_length": 48,          # title + opening sentence: keeps the demo inside its time budget
    "training.epochs": 1.0,
    "training.batch_size": 16,
    "training.learning_rate": 1.0e-3,
    "training.head_learning_rate": 1.0e-2,
}
DEMO_ROUNDS = 3
DEMO_CHARS = 300  # characters of each article read: more than max_length tokens need


@dataclass
class DemoResult:
    result: SimulationResult
    report: Path
    figures: dict[str, Any]
    seconds: float


def build(out: Path, spec: PartitionSpec = DEMO_SPEC, settings: dict[str, Any] | None = None) -> None:
    """Write the demo federation into `out` unless the same one is already there (then it resumes)."""
    if (out / "fedbip.yaml").exists():  # written last by write_federation: the federation is complete
        doc_path = out / PARTITION_FILE
        if not doc_path.is_file() or json.loads(doc_path.read_text(encoding="utf-8")).get("spec") != asdict(spec):
            raise UserError(f"{out}: holds another federation than this one; use another --out or remove it")
        return
    from fedbip_cli.datasets.bbc import load_bbc

    texts, labels, _ = load_bbc(max_chars=DEMO_CHARS)
    write_federation(out, texts, labels, spec, settings=DEMO_SETTINGS if settings is None else settings,
                     force=True)


def run_demo(out: str | Path, *, rounds: int = DEMO_ROUNDS, reporter: Reporter | None = None,
             restart: bool = False) -> DemoResult:
    """Build (or resume) the demo federation, run all six strategies, write report.md."""
    from fedbip_cli.sim.report import write_report

    t0 = time.perf_counter()
    out = Path(out)
    build(out)
    result = simulate(out, all_strategies(), rounds, reporter=reporter, restart=restart, plots=False)
    seconds = time.perf_counter() - t0
    notes = [f"BBC News, {DEMO_SPEC.clients} clients (Dirichlet alpha {DEMO_SPEC.alpha}, {DEMO_SPEC.groups} "
             f"interest-conflict groups: group 1 reads every topic as the next one), {DEMO_SPEC.train} training "
             f"and {DEMO_SPEC.test} test examples per client; packaged all-MiniLM-L6-v2 with LoRA.",
             "Same settings for every strategy: " + ", ".join(f"{k}={v}" for k, v in DEMO_SETTINGS.items()) + ".",
             "fedavg-ft: after each round every client fine-tunes the global adapter locally before evaluating.",
             f"{result.trained} local trainings run, {result.reused} reused where provably identical; "
             f"simulation {seconds:.0f} s."]
    report, figures = write_report(result, out, title="fedbip demo", groups=read_groups(out), notes=notes)
    return DemoResult(result, report, figures, seconds)
