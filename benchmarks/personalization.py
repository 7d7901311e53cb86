"""The demo's comparison over several seeds, in the limited-data regime (the demo's) or the data-rich one.

Each seed draws its own federation (partition), initial adapter and training order; every strategy
runs with the regime's settings (fedbip_cli/sim/demo.py: REGIMES), which are the same for all of
them. Federations are built under --out and resumed if they are already there. For each strategy the
table gives, after each round, the mean test accuracy over clients as mean ± std over seeds, and,
after the last round, per seed the mean ± standard error over clients and the worst client.

    python benchmarks/personalization.py --regime limited-data --seeds 0,1 --rounds 3 --out bench-out/limited
    python benchmarks/personalization.py --regime data-rich --seeds 0,1 --rounds 3 --out bench-out/rich

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
    ap.add_argument("--regime", default="limited-data", help="limited-data (the demo's) or data-rich")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="training.threads for every run (default: torch's)")
    ap.add_argument("--strategies", default="all", help="comma-separated, 'all' = every strategy but the TAP variants")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a regime setting for every strategy, e.g. training.epochs=2 (repeatable)")
    a = ap.parse_args()

    from fedbip_cli.sim.demo import REGIMES, build
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.sim.report import client_spread, group_similarity, read_similarity
    from fedbip_cli.sim.simulate import parse_strategies, simulate

    regime = REGIMES[a.regime]
    spec = regime.spec
    strategies = parse_strategies(a.strategies, "fedbip")
    seeds = [int(s) for s in a.seeds.split(",")]
    acc: dict[str, list[list[float]]] = {s: [] for s in strategies}
    per_client: dict[str, list[float]] = {s: [] for s in strategies}
    """Last round's accuracy of every client of every seed, in the same order for every strategy (paired)."""
    last: dict[str, list[tuple[float, float, float]]] = {s: [] for s in strategies}
    sims: dict[str, list[tuple[float, float]]] = {s: [] for s in ("fedbip", "fedbip-layer") if s in strategies}
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    t0 = time.perf_counter()
    for seed in seeds:
        root = Path(a.out) / f"seed{seed}"
        settings = regime.settings | {"training.seed": seed, "lora.init_seed": seed, "training.threads": a.threads}
        settings |= {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.set)}
        build(root, replace(spec, seed=seed), settings, regime.chars)
        res = simulate(root, list(strategies), a.rounds, plots=False)
        groups = read_groups(root)
        for s in strategies:
            acc[s].append(res.accuracy(s))
            last[s].append(client_spread(res.evaluations[s][-1]))
            per_client[s] += [res.evaluations[s][-1]["accuracy"][c] for c in res.clients]
        for s in sims:
            clients, matrix = read_similarity(res, s, a.rounds - 1)
            sims[s].append(group_similarity(matrix, clients, groups))
        print(f"seed {seed}: {res.seconds:.0f} s, last round " +
              ", ".join(f"{s} {res.accuracy(s)[-1]:.3f}" for s in strategies), flush=True)
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    rounds = range(a.rounds)
    lines = [f"Regime {regime.name}: {spec.clients} clients, Dirichlet alpha {spec.alpha}, {spec.groups} conflict "
             f"groups, {spec.train} train / {spec.test} test examples per client; settings "
             + ", ".join(f"{k}={v}" for k, v in regime.settings.items())
             + (f", with {', '.join(a.set)}" if a.set else "") + f"; seeds {a.seeds}; {a.rounds} rounds.", "",
             "Mean test accuracy (%) over clients after each round, mean ± std over seeds; then, after the last "
             "round, each seed's mean ± standard error over clients (worst client).", "",
             "| strategy | " + " | ".join(f"round {t}" for t in rounds) + " | "
             + " | ".join(f"seed {s}: last round (worst)" for s in seeds) + " |",
             "|---|" + "---|" * (a.rounds + len(seeds))]
    for s in strategies:
        cells = [fmt([run[t] for run in acc[s]]) for t in rounds]
        cells += [f"{100 * m:.1f} ± {100 * se:.1f} ({100 * w:.1f})" for m, se, w in last[s]]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    for s, pairs in sims.items():
        lines.append(f"- {s}, last round: task-vector cosine within groups {fmt([w for w, _ in pairs])} (x100), "
                     f"across groups {fmt([c for _, c in pairs])} (x100)")
    ours = [s for s in ("fedbip", "fedbip-layer") if s in strategies]
    for s in ours:
        diffs = []
        for b in strategies:
            if b in ours or b == s:
                continue
            d = [x - y for x, y in zip(per_client[s], per_client[b])]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
            diffs.append(f"{b} {100 * statistics.mean(d):+.1f} ± {100 * se:.1f}")
        lines.append(f"- {s} minus each baseline, last round, paired per client ({len(per_client[s])} clients over the "
                     f"seeds; mean ± s.e., points): " + ", ".join(diffs))
    lines.append(f"- wall time {time.perf_counter() - t0:.0f} s; load average {load_start} at the start, "
                 f"{load_end} at the end")
    text = "\n".join(lines)
    print(text)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "table.md").write_text(text + "\n")
    (Path(a.out) / "results.json").write_text(json.dumps({"regime": regime.name, "accuracy": acc, "last_round": last,
                                                          "similarity": sims}, indent=2))


if __name__ == "__main__":
    main()
