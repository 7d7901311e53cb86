"""The demo's comparison at larger settings: more rounds, several seeds, mean +- std across seeds.

Each seed draws its own federation (partition), initial adapter and training order; every strategy
runs with the demo's settings (fedbip_cli/demo.py: DEMO_SETTINGS), which are the same for all of
them. Federations are built under --out and resumed if they are already there.

    python benchmarks/personalization.py --out bench-out/personalization --seeds 0,1,2 --rounds 5 [--threads 1]

TAP's stages (docs/tap.md) and their ablations: add the strategies `tap` (fedavg + gate + distillation,
as TAP runs it) and `fedbip-tap`, and vary `--set tap.margin=...` / `--set tap.distill=false`, each
ablation in its own --out folder:

    python benchmarks/personalization.py --out bench-out/tap-m0.01 --strategies fedavg,fedbip,tap,fedbip-tap
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-out/personalization")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="training.threads for every run (default: torch's)")
    ap.add_argument("--strategies", default="all", help="comma-separated, 'all' = the six baselines and FedBip")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a demo setting for every strategy, e.g. training.epochs=2 (repeatable)")
    a = ap.parse_args()

    from fedbip_cli.sim.demo import DEMO_SETTINGS, DEMO_SPEC, build
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.sim.report import group_similarity, read_similarity
    from fedbip_cli.sim.simulate import parse_strategies, simulate

    strategies = parse_strategies(a.strategies, "fedbip")
    seeds = [int(s) for s in a.seeds.split(",")]
    acc: dict[str, list[list[float]]] = {s: [] for s in strategies}
    worst: dict[str, list[float]] = {s: [] for s in strategies}
    sims: dict[str, list[tuple[float, float]]] = {s: [] for s in ("fedbip", "fedbip-layer") if s in strategies}
    t0 = time.perf_counter()
    for seed in seeds:
        root = Path(a.out) / f"seed{seed}"
        settings = DEMO_SETTINGS | {"training.seed": seed, "lora.init_seed": seed, "training.threads": a.threads}
        settings |= {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.set)}
        build(root, replace(DEMO_SPEC, seed=seed), settings)
        res = simulate(root, list(strategies), a.rounds, plots=False)
        groups = read_groups(root)
        for s in strategies:
            acc[s].append(res.accuracy(s))
            worst[s].append(res.evaluations[s][-1]["worst_accuracy"])
        for s in sims:
            clients, matrix = read_similarity(res, s, a.rounds - 1)
            sims[s].append(group_similarity(matrix, clients, groups))
        print(f"seed {seed}: {res.seconds:.0f} s, last round " +
              ", ".join(f"{s} {res.accuracy(s)[-1]:.3f}" for s in strategies), flush=True)
    rounds = range(a.rounds)
    lines = [f"Mean test accuracy (%) over clients, mean ± std over seeds {a.seeds}; {a.rounds} rounds; "
             f"{DEMO_SPEC.clients} clients, Dirichlet alpha {DEMO_SPEC.alpha}, {DEMO_SPEC.groups} conflict groups, "
             f"{DEMO_SPEC.train} train / {DEMO_SPEC.test} test examples per client; demo settings"
             + (f" with {', '.join(a.set)}" if a.set else "") + ".", "",
             "| strategy | " + " | ".join(f"round {t}" for t in rounds) + " | worst client, last round |",
             "|---|" + "---|" * (a.rounds + 1)]
    for s in strategies:
        cells = [fmt([run[t] for run in acc[s]]) for t in rounds]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {fmt(worst[s])} |")
    lines.append("")
    for s, pairs in sims.items():
        lines.append(f"- {s}, last round: task-vector cosine within groups {fmt([w for w, _ in pairs])} (x100), "
                     f"across groups {fmt([c for _, c in pairs])} (x100)")
    lines.append(f"- wall time {time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines)
    print(text)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "table.md").write_text(text + "\n")
    (Path(a.out) / "results.json").write_text(json.dumps({"accuracy": acc, "worst": worst, "similarity": sims}, indent=2))


if __name__ == "__main__":
    main()
