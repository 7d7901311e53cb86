"""Which weight rule serves clients best, on the same task vectors? Re-aggregates round 0 of finished
fedbip runs (from benchmarks/personalization.py or `fedbip demo`) with FedBip's rule and alternatives,
and evaluates every client's result on its own test split. No retraining: only the weights differ.

    python benchmarks/weights_ablation.py bench-out/personalization/seed0 [more federation folders]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def variants(groups: list[int]):
    from fedbip_cli.core.strategies import Mixing
    from fedbip_cli.core.strategies.fedbip import FedBip
    from fedbip_cli.core.strategies.fedbip_layer import FedBipLayer

    g = np.array(groups)
    oracle = (g[:, None] == g[None, :]).astype(float)
    return {
        "local (own task vector only)": lambda st: Mixing(np.eye(len(g))),
        "fedbip: clamp (default)": FedBip().mixing,
        "fedbip: softmax T=0.1": FedBip(negative="softmax", temperature=0.1).mixing,
        "fedbip: top-2 neighbours": FedBip(top_k=2).mixing,
        "fedbip: self weight >= 0.5": FedBip(self_floor=0.5).mixing,
        "fedbip-layer: clamp": FedBipLayer().mixing,
        "oracle: mean over own group": lambda st: Mixing(oracle / oracle.sum(1, keepdims=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="federation folders holding runs/fedbip/rounds/0000")
    a = ap.parse_args()

    from fedbip_cli.core.engine.aggregate import round_stats, write_round_outputs
    from fedbip_cli.sim.partition import read_groups
    from fedbip_cli.steps import site
    from fedbip_cli.steps.coordinator.inputs import load_round
    from fedbip_cli.workspace.layout import Workspace

    scores: dict[str, list[float]] = {}
    runtime = None
    for folder in a.folders:
        ws = Workspace.open(Path(folder) / "runs" / "fedbip")
        data = load_round(ws, 0)
        stats = round_stats(data.reader(), need_model_gram=False)
        groups = read_groups(folder)
        # model and tokenizer shared; not the tokenized data: each folder has its own client files
        runtime = site.SiteRuntime(ws, _model=runtime.model, _task=runtime.task) if runtime else site.SiteRuntime(ws)
        with tempfile.TemporaryDirectory() as tmp:
            for name, rule in variants([groups[c] for c in data.clients]).items():
                dirs = [Path(tmp) / name.replace(" ", "_") / c for c in data.clients]
                write_round_outputs(data.reader(), rule(stats), dirs, None)
                acc = [site.evaluate(ws, c, 1, adapter=d, runtime=runtime, log=False)["accuracy"]
                       for c, d in zip(data.clients, dirs)]
                scores.setdefault(name, []).append(float(np.mean(acc)))
                print(f"{folder}: {name}: {np.mean(acc):.3f}", flush=True)
    print(f"\n| weight rule (round 0 task vectors) | mean accuracy (%), mean ± std over {len(a.folders)} federations |")
    print("|---|---|")
    for name, vals in scores.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"| {name} | {100 * statistics.mean(vals):.1f} ± {100 * sd:.1f} |")


if __name__ == "__main__":
    main()
