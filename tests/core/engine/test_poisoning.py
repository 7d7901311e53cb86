"""One malicious client of five must not dominate the honest clients' personalized adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.steps.coordinator import aggregate
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace

HONEST = ["c000", "c001", "c002", "c003"]
EVIL = "c004"  # in the same group as c000 and c002
# How far an honest client's adapter may move, in units of the median honest task-vector norm.
# scaled: the attacker keeps its cosine (weight p ~ 1/3 here) but is clipped to 3 x median, so the move is
# at most p * (3 + 1) x median; without clipping it is ~p * 100 (see the last test).
# flipped / random: negative or near-zero cosine gives the attacker (almost) no weight; what remains is
# mostly the loss of the honest contribution that client would have made (~p x its norm).
BOUND = {"scaled": 1.0, "flipped": 0.25, "random": 0.25}


def build(root: Path) -> Path:
    make_round(root, 5, Shape(layers=2, hidden=32, r=4, head=None), groups=2)
    return root


def flat(path: Path, space: str) -> np.ndarray:
    """An adapter as one vector: its factors (factor space), or its weight changes B @ A (delta space,
    where outputs are refactored and only the products are comparable; the scale is common to all)."""
    arrays, _ = safetensors_io.load(path)
    if space == "factor":
        return np.concatenate([arrays[k].ravel() for k in sorted(arrays)])
    mods = sorted(k[: -len(".lora_A.weight")] for k in arrays if k.endswith(".lora_A.weight"))
    return np.concatenate([(arrays[f"{m}.lora_B.weight"] @ arrays[f"{m}.lora_A.weight"]).ravel() for m in mods])


def outputs(root: Path, space: str = "factor") -> dict[str, np.ndarray]:
    return {c: flat(root / f"rounds/0001/start/{c}/adapter_model.safetensors", space) for c in HONEST}


def attack(path: Path, kind: str) -> None:
    arrays, meta = safetensors_io.load(path)
    rng = np.random.default_rng(9)
    change = {"scaled": lambda v: v * 100, "flipped": lambda v: -v,
              "random": lambda v: rng.standard_normal(v.shape).astype(np.float32) * 10 * np.abs(v).mean()}[kind]
    safetensors_io.save(path, {k: change(v) for k, v in arrays.items()}, meta)


def median_honest_norm(root: Path, space: str = "factor") -> float:
    """The median length of the honest clients' updates (trained - start), in the space compared."""
    start = flat(root / "initial/adapter_model.safetensors", space)
    return float(np.median([np.linalg.norm(flat(root / f"rounds/0000/trained/{c}/adapter_model.safetensors", space)
                                           - start) for c in HONEST]))


@pytest.mark.parametrize("kind", ["scaled", "flipped", "random"])
@pytest.mark.parametrize("strategy, space", [("fedbip", "factor"), ("fedbip-layer", "factor"), ("fedbip", "delta")])
def test_malicious_client_moves_honest_adapters_less_than_bound(tmp_path, kind, strategy, space):
    clean = build(tmp_path / "clean")
    aggregate(Workspace.open(clean), 0, strategy=strategy, space=space)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean / "rounds/0000/deltas", poisoned / "rounds/0000/deltas")
    shutil.copytree(clean / "initial", poisoned / "initial")
    shutil.copytree(clean / "rounds/0000/trained", poisoned / "rounds/0000/trained")
    shutil.copy(clean / "fedbip.yaml", poisoned / "fedbip.yaml")
    attack(poisoned / f"rounds/0000/deltas/{EVIL}.safetensors", kind)
    aggregate(Workspace.open(poisoned), 0, strategy=strategy, space=space)
    scale = median_honest_norm(clean, space)
    a, b = outputs(clean, space), outputs(poisoned, space)
    moves = {c: float(np.linalg.norm(a[c] - b[c])) / scale for c in HONEST}
    assert max(moves.values()) < BOUND[kind], moves


def test_without_clipping_a_scaled_attack_dominates(tmp_path):
    """The contrast that justifies clipping being on by default."""
    root = build(tmp_path / "ws")
    ws = Workspace.open(root)
    ws.config.aggregation.clip_factor = None
    aggregate(ws, 0)
    before = outputs(root)
    attack(root / f"rounds/0000/deltas/{EVIL}.safetensors", "scaled")
    aggregate(ws, 0, force=True)  # the round is final: redoing it with a changed vector takes force
    after = outputs(root)
    scale = median_honest_norm(root)
    assert max(float(np.linalg.norm(before[c] - after[c])) / scale for c in HONEST) > 5
