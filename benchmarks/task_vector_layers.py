"""What a task vector measures on a decoder: per-layer cosine of the clients' task vectors, within a group
(the instructions regime: clients of the same task) and across groups, from a simulate run's files.

Reads one round's deltas/ (any strategy's; round 0 is the same for all but fedamp) and the workspace's
partition.json, and prints per transformer layer and per module kind (q_proj / v_proj, A / B factors)
the mean off-diagonal cosine within and across groups, beside the whole-vector cosine FedBip uses; then
the weights the strategy gave (weights.json): each client's own, its group's others', the other groups'.

    python benchmarks/task_vector_layers.py bench-out/instructions/seed0 --strategy fedbip --round 0
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedbip_cli.core.files.regular import read_json
from fedbip_cli.core.strategies.similarity import cosine_from_gram
from fedbip_cli.sim.partition import read_groups
from fedbip_cli.sim.report import group_similarity

LAYER = re.compile(r"layers\.(\d+)\.")


def grams(deltas: Path, clients: list[str]) -> dict[str, np.ndarray]:
    """Gram matrices of the clients' task vectors per group key: 'all', 'layer N', and module kinds."""
    vectors = {c: load_file(str(deltas / f"{c}.safetensors")) for c in clients}
    out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((len(clients), len(clients))))
    for name in vectors[clients[0]]:
        x = np.stack([vectors[c][name].astype(np.float64).ravel() for c in clients])
        g = x @ x.T
        m = LAYER.search(name)
        kind = ("q_proj" if "q_proj" in name else "v_proj" if "v_proj" in name else "other") + \
               (" A" if "lora_A" in name else " B" if "lora_B" in name else "")
        for key in ("all", f"layer {int(m.group(1)):02d}" if m else "no layer", kind):
            out[key] += g
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--strategy", default="fedbip")
    ap.add_argument("--round", type=int, default=0)
    a = ap.parse_args()
    groups = read_groups(a.workspace) or {}
    deltas = a.workspace / "runs" / a.strategy / "rounds" / f"{a.round:04d}" / "deltas"
    clients = sorted(p.stem for p in deltas.glob("*.safetensors"))
    print(f"{deltas}: {len(clients)} clients, groups {sorted(set(groups.values()))}")
    print("| part | within groups | across groups |\n|---|---|---|")
    for key, g in sorted(grams(deltas, clients).items(), key=lambda kv: (kv[0] != "all", kv[0])):
        within, across = group_similarity(cosine_from_gram(g), clients, groups)
        print(f"| {key} | {within:.3f} | {across:.3f} |")
    doc = read_json(deltas.parent / "weights.json")
    names, w = doc["clients"], np.array(doc["weights"])
    g = np.array([groups.get(c, 0) for c in names])
    same = g[:, None] == g[None, :]
    own = np.diag(w)
    group = (w * same).sum(1) - own
    print(f"\n{a.strategy} weights, round {a.round} (mean over clients): own {own.mean():.3f}, the rest of its group "
          f"{group.mean():.3f}, other groups {(w * ~same).sum(1).mean():.3f}")


if __name__ == "__main__":
    main()
