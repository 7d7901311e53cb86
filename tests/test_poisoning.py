"""One malicious client of five must not dominate the honest clients' personalized adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedbip_cli.coordinator import aggregate
from fedbip_cli.core import stfile
from fedbip_cli.core.synthetic import adapter_config, lora_layout, make_round
from fedbip_cli.workspace import Workspace

CLIENTS = ["h0", "h1", "h2", "h3", "evil"]
HONEST = CLIENTS[:4]
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
# How far an honest client's adapter may move, in units of the median honest task-vector norm.
# scaled: the attacker keeps its cosine (weight p ~ 1/3 here) but is clipped to 3 x median, so the move is
# at most p * (3 + 1) x median; without clipping it is ~p * 100 (see the last test).
# flipped / random: negative or near-zero cosine gives the attacker (almost) no weight; what remains is
# mostly the loss of the honest contribution that client would have made (~p x its norm).
BOUND = {"scaled": 1.0, "flipped": 0.25, "random": 0.25}


def build(root: Path) -> Path:
    make_round(root, CLIENTS, lora_layout(MODULES, 4, 32, 32), adapter_config(MODULES, 4, 8.0), groups=2)
    return root


def outputs(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for c in HONEST:
        arrays, _ = stfile.load(root / f"rounds/0001/start/{c}/adapter_model.safetensors")
        out[c] = np.concatenate([arrays[k].ravel() for k in sorted(arrays)])
    return out


def attack(path: Path, kind: str) -> None:
    arrays, meta = stfile.load(path)
    rng = np.random.default_rng(9)
    change = {"scaled": lambda v: v * 100, "flipped": lambda v: -v,
              "random": lambda v: rng.standard_normal(v.shape).astype(np.float32) * 10 * np.abs(v).mean()}[kind]
    stfile.save(path, {k: change(v) for k, v in arrays.items()}, meta)


def median_honest_norm(root: Path) -> float:
    norms = []
    for c in HONEST:
        arrays, _ = stfile.load(root / f"rounds/0000/deltas/{c}.safetensors")
        norms.append(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays.values())))
    return float(np.median(norms))


@pytest.mark.parametrize("kind", ["scaled", "flipped", "random"])
@pytest.mark.parametrize("strategy", ["fedbip", "fedbip-layer"])
def test_malicious_client_moves_honest_adapters_less_than_bound(tmp_path, kind, strategy):
    clean = build(tmp_path / "clean")
    aggregate(Workspace.open(clean), 0, strategy=strategy)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean / "rounds/0000/deltas", poisoned / "rounds/0000/deltas")
    shutil.copytree(clean / "initial", poisoned / "initial")
    shutil.copy(clean / "fedbip.yaml", poisoned / "fedbip.yaml")
    attack(poisoned / "rounds/0000/deltas/evil.safetensors", kind)
    aggregate(Workspace.open(poisoned), 0, strategy=strategy)
    scale = median_honest_norm(clean)
    a, b = outputs(clean), outputs(poisoned)
    moves = {c: float(np.linalg.norm(a[c] - b[c])) / scale for c in HONEST}
    assert max(moves.values()) < BOUND[kind], moves


def test_without_clipping_a_scaled_attack_dominates(tmp_path):
    """The contrast that justifies clipping being on by default."""
    root = build(tmp_path / "ws")
    ws = Workspace.open(root)
    ws.config.aggregation.clip_factor = None
    aggregate(ws, 0)
    before = outputs(root)
    attack(root / "rounds/0000/deltas/evil.safetensors", "scaled")
    aggregate(ws, 0)
    after = outputs(root)
    scale = median_honest_norm(root)
    assert max(float(np.linalg.norm(before[c] - after[c])) / scale for c in HONEST) > 5
