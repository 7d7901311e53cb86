"""The demo's comparison over several seeds, in one of its regimes (limited-data, the demo's; data-rich;
instructions, SmolLM2 on instruction tasks).

Each seed draws its own federation (partition), initial adapter and training order; every strategy
runs with the regime's settings (fedbip_cli/sim/demo.py: REGIMES), which are the same for all of
them. Federations are built under --out and resumed if they are already there. For each strategy the
table gives, after each round, the mean of the task type's headline metric over clients (accuracy;
causal-lm: ROUGE-L) as mean ± std over seeds, and, after the last round, per seed the mean ± standard
error over clients and the worst client; then FedBip's paired differences per client against each
baseline, and its worst client against that client's own local training.

    python benchmarks/personalization.py --regime limited-data --seeds 0,1 --rounds 3 --out bench-out/limited
    python benchmarks/personalization.py --regime data-rich --seeds 0,1 --rounds 3 --out bench-out/rich
    python benchmarks/personalization.py --regime instructions --seeds 0,1 --out bench-out/instructions

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
    ap.add_argument("--regime", default="limited-data", help="limited-data (the demo's), data-rich or instructions")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rounds", type=int, default=None, help="default: the regime's (3; instructions 1)")
    ap.add_argument("--threads", type=int, default=None, help="training.threads for every run (default: the "
                                                              "regime's, else torch's)")
    ap.add_argument("--strategies", default="all", help="comma-separated, 'all' = every strategy but the TAP variants")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a regime setting for every strategy, e.g. training.epochs=2 (repeatable)")
    a = ap.parse_args()

    from fedbip_cli.sim.demo import REGIMES, build
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.sim.report import client_spread, group_similarity, read_similarity
    from fedbip_cli.sim.simulate import parse_strategies, simulate
    from fedbip_cli.workspace.task_types import METRIC_LABELS

    regime = REGIMES[a.regime]
    spec = regime.spec
    a.rounds = a.rounds or regime.rounds
    strategies = parse_strategies(a.strategies, "fedbip")
    seeds = [int(s) for s in a.seeds.split(",")]
    acc: dict[str, list[list[float]]] = {s: [] for s in strategies}
    per_client: dict[str, list[float]] = {s: [] for s in strategies}
    """Last round's headline score of every client of every seed, in the same order for every strategy (paired)."""
    last: dict[str, list[tuple[float, float, float]]] = {s: [] for s in strategies}
    sims: dict[str, list[tuple[float, float]]] = {s: [] for s in ("fedbip", "fedbip-layer") if s in strategies}
    per_group: dict[str, dict[int, list[float]]] = {}
    """Last round's score of every client of every seed, by the client's group (instructions: its task)."""
    metric = "accuracy"
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    t0 = time.perf_counter()
    for seed in seeds:
        root = Path(a.out) / f"seed{seed}"
        settings = regime.settings | {"training.seed": seed, "lora.init_seed": seed}
        if a.threads is not None or "training.threads" not in settings:
            settings["training.threads"] = a.threads
        settings |= {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.set)}
        build(root, replace(spec, seed=seed), settings, regime.chars)
        res = simulate(root, list(strategies), a.rounds, plots=False, eval_workers=regime.eval_workers)
        groups = read_groups(root)
        metric = res.primary
        for s in strategies:
            acc[s].append(res.mean(s))
            last[s].append(client_spread(res.evaluations[s][-1], metric))
            per_client[s] += [res.evaluations[s][-1][metric][c] for c in res.clients]
            for c in res.clients:
                per_group.setdefault(s, {}).setdefault((groups or {}).get(c, 0), []).append(
                    res.evaluations[s][-1][metric][c])
        for s in sims:
            clients, matrix = read_similarity(res, s, a.rounds - 1)
            sims[s].append(group_similarity(matrix, clients, groups))
        print(f"seed {seed}: {res.seconds:.0f} s, last round " +
              ", ".join(f"{s} {res.mean(s)[-1]:.3f}" for s in strategies), flush=True)
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    rounds = range(a.rounds)
    name = METRIC_LABELS.get(metric, metric)
    lines = [f"Regime {regime.name}: {regime.describe()} Settings "
             + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in regime.settings.items())
             + (f", with {', '.join(a.set)}" if a.set else "") + f"; seeds {a.seeds}; {a.rounds} rounds.", "",
             f"Mean test {name} (%) over clients after each round, mean ± std over seeds; then, after the last "
             "round, each seed's mean ± standard error over clients (worst client).", "",
             "| strategy | " + " | ".join(f"round {t}" for t in rounds) + " | "
             + " | ".join(f"seed {s}: last round (worst)" for s in seeds) + " |",
             "|---|" + "---|" * (a.rounds + len(seeds))]
    for s in strategies:
        cells = [fmt([run[t] for run in acc[s]]) for t in rounds]
        cells += [f"{100 * m:.1f} ± {100 * se:.1f} ({100 * w:.1f})" for m, se, w in last[s]]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    group_names = getattr(spec, "tasks", None)  # instructions: group g is task g
    lines += ["", f"Last round's {name} (%) per {'task' if group_names else 'group'}, mean over its clients and the "
                  "seeds:", "", "| strategy | " + " | ".join(str(group_names[g] if group_names else g)
                                                           for g in sorted(per_group[strategies[0]])) + " |",
              "|---|" + "---|" * len(per_group[strategies[0]])]
    for s in strategies:
        cells = [f"{100 * statistics.mean(v):.1f}" for _, v in sorted(per_group[s].items())]
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
        if "local" in strategies:
            d = [x - y for x, y in zip(per_client[s], per_client["local"])]
            lines.append(f"- {s}: worst client minus its own local training {100 * min(d):+.1f} points; clients more "
                         f"than 2 points below local: {sum(x < -0.02 for x in d)} of {len(d)}")
    lines.append(f"- wall time {time.perf_counter() - t0:.0f} s; load average {load_start} at the start, "
                 f"{load_end} at the end")
    text = "\n".join(lines)
    print(text)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "table.md").write_text(text + "\n")
    (Path(a.out) / "results.json").write_text(json.dumps({"regime": regime.name, "metric": metric, "scores": acc,
                                                          "last_round": last, "per_client": per_client,
                                                          "similarity": sims}, indent=2))


if __name__ == "__main__":
    main()
