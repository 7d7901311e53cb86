"""Delta-space similarity and aggregation against dense ΔW computed on small synthetic rounds (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedbip_cli.core.files.adapter import lora_modules, module_of, read_adapter
from fedbip_cli.core.strategies import Mixing, Strategy
from fedbip_cli.steps import coordinator
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace


def load(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as float64, through the safetensors library (independent of fedbip's reader)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}


def dense_delta(folder: Path) -> dict[str, np.ndarray]:
    """ΔW = s·B·A per LoRA module, and dense tensors as they are: the adapter in delta space."""
    ad = read_adapter(folder)
    t = load(ad.weights_path)
    mods = lora_modules(t)
    out = {m: ad.scale(m) * t[f"{m}.lora_B.weight"] @ t[f"{m}.lora_A.weight"] for m in mods}
    out.update({k: v for k, v in t.items() if ".lora_" not in k})
    return out


def start_dir(ws: Workspace, c: str) -> Path:
    return ws.resolve_start(0, c)


def dense_taskvecs(ws: Workspace, clients: list[str]) -> list[dict[str, np.ndarray]]:
    out = []
    for c in clients:
        s, t = dense_delta(start_dir(ws, c)), dense_delta(ws.trained_dir(0, c))
        out.append({k: t[k] - s[k] for k in s})
    return out


def flat(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([d[k].ravel() for k in sorted(d)])


def cosine(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1)
    return (x @ x.T) / n[:, None] / n[None, :]


@pytest.mark.parametrize("storage", ["factor", "delta"])
def test_delta_similarity_equals_dense(tmp_path, storage):
    rnd = make_round(tmp_path, 4, Shape(hidden=24, r=3), space=storage, shared_start=False, zero_b=False)
    ws = Workspace.open(tmp_path)
    taus = dense_taskvecs(ws, rnd.clients)
    res = coordinator.similarity(ws, 0, space="delta", layer_wise=True, plot=False)
    np.testing.assert_allclose(res.matrix, cosine(np.stack([flat(t) for t in taus])), rtol=1e-5, atol=1e-6)
    m = Shape(hidden=24, r=3).modules()[1]
    np.testing.assert_allclose(res.per_module[m], cosine(np.stack([t[m].ravel() for t in taus])), rtol=1e-5, atol=1e-6)
    assert json.loads((ws.round_dir(0) / "similarity.json").read_text())["space"] == "delta"


def exact_outputs(ws: Workspace, clients: list[str], weights: np.ndarray, mode: str) -> list[dict[str, np.ndarray]]:
    """Dense exact personalized ΔW: start_i + sum_k W_ik tau_k (update) or sum_k W_ik trained_k (model)."""
    starts = [dense_delta(start_dir(ws, c)) for c in clients]
    trained = [dense_delta(ws.trained_dir(0, c)) for c in clients]
    out = []
    for i in range(len(clients)):
        if mode == "update":
            out.append({k: starts[i][k] + sum(w * (t[k] - s[k]) for w, t, s in zip(weights[i], trained, starts))
                        for k in starts[i]})
        else:
            out.append({k: sum(w * t[k] for w, t in zip(weights[i], trained)) for k in starts[i]})
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("strategy", ["fedbip", "fedavg", "fedbip-layer", "fedamp", "local"])
def test_delta_aggregate_is_exact_when_the_rank_allows(tmp_path, strategy):
    # hidden = r: every sum has rank <= r, so refactoring loses nothing
    rnd = make_round(tmp_path, 3, Shape(hidden=6, r=6, head=(3, 6)), space="delta", shared_start=False, zero_b=False)
    ws = Workspace.open(tmp_path)
    res = coordinator.aggregate(ws, 0, strategy=strategy, space="delta")
    doc = json.loads((ws.round_dir(0) / "weights.json").read_text())
    for i, c in enumerate(rnd.clients):
        got = dense_delta(ws.start_dir(1, c))
        for m in got:
            key = m if m in doc["per_module"] else module_of(m)  # LoRA modules by name, dense tensors by module
            w = np.array(doc["per_module"].get(key, doc["weights"]))
            assert rel(got[m], exact_outputs(ws, rnd.clients, w, res.mode)[i][m]) < 1e-5, (c, m)
        assert res.truncation[c]["relative"] < 1e-6
    n = np.array(doc["num_examples"], dtype=float)
    glob = dense_delta(ws.global_dir(1))
    want = exact_outputs(ws, rnd.clients, np.tile(n / n.sum(), (3, 1)), "model")[0]
    assert all(rel(glob[k], want[k]) < 1e-5 for k in want)
    assert set(res.truncation) == set(rnd.clients) | {"global"}
    assert doc["space"] == "delta" and doc["truncation"] == res.truncation


@pytest.mark.parametrize("strategy, shared", [("fedbip", False), ("fedbip", True), ("fedavg", False)])
def test_reported_truncation_matches_the_measured_error(tmp_path, strategy, shared):
    rnd = make_round(tmp_path, 4, Shape(hidden=20, r=2), space="delta", shared_start=shared, zero_b=False)
    ws = Workspace.open(tmp_path)
    res = coordinator.aggregate(ws, 0, strategy=strategy, space="delta")
    weights = np.array(json.loads((ws.round_dir(0) / "weights.json").read_text())["weights"])
    exact = exact_outputs(ws, rnd.clients, weights, res.mode)
    mods = Shape(hidden=20, r=2).modules()
    for i, c in enumerate(rnd.clients):
        got = dense_delta(ws.start_dir(1, c))
        start = dense_delta(start_dir(ws, c))
        err = np.sqrt(sum(np.sum((got[m] - exact[i][m]) ** 2) for m in mods))
        norm = np.sqrt(sum(np.sum(exact[i][m] ** 2) for m in mods))
        update = np.sqrt(sum(np.sum((exact[i][m] - start[m]) ** 2) for m in mods))
        rep = res.truncation[c]
        assert rep["relative"] > 1e-3  # rank 2 cannot hold these sums: something is truncated
        assert rep["relative"] == pytest.approx(err / norm, rel=1e-3)
        # against what the round changes, which is smaller than the whole ΔW: the larger figure
        assert rep["relative_to_update"] == pytest.approx(err / update, rel=1e-3)
        assert rep["max_module_relative"] == pytest.approx(max(rel(got[m], exact[i][m]) for m in mods), rel=1e-3)
    manifest = json.loads((ws.round_dir(0) / "manifest.json").read_text())["steps"]["aggregate"]
    assert manifest["space"] == "delta" and set(manifest["truncation_relative"]) == set(rnd.clients) | {"global"}


class Fixed(Strategy):
    """Given weights, so both spaces aggregate with the same matrix (their cosines differ by design)."""

    name = "fixed"

    def __init__(self, weights: np.ndarray, mode: str) -> None:
        self._weights, self._mode = weights, mode

    def mixing(self, stats):
        return Mixing(self._weights, mode=self._mode)


@pytest.mark.parametrize("storage", ["factor", "delta"])
@pytest.mark.parametrize("mode", ["update", "model"])
def test_frozen_a_factor_and_delta_give_the_same_weight_change(tmp_path, storage, mode):
    strategy = Fixed(np.random.default_rng(0).dirichlet(np.ones(4), size=4), mode)
    rnd = make_round(tmp_path, 4, Shape(hidden=16, r=2), space=storage, shared_start=False, zero_b=False,
                     freeze_a=True)
    ws = Workspace.open(tmp_path)
    out, a_tensors = {}, {}
    for space in ("factor", "delta"):
        res = coordinator.aggregate(ws, 0, strategy=strategy, space=space, force=True)  # redo the final round
        out[space] = {c: dense_delta(ws.start_dir(1, c)) for c in rnd.clients}
        out[space]["global"] = dense_delta(ws.global_dir(1))
        a_tensors[space] = {c: load(ws.start_dir(1, c) / "adapter_model.safetensors") for c in rnd.clients}
        if space == "delta":
            assert all(v["relative"] == 0.0 for v in res.truncation.values())
    for c, want in out["factor"].items():
        for k in want:
            assert rel(out["delta"][c][k], want[k]) < 1e-5, (c, k)
    # the delta engine keeps the shared, frozen A exactly
    shared = load(start_dir(ws, rnd.clients[0]) / "adapter_model.safetensors")
    for c in rnd.clients:
        for k, v in a_tensors["delta"][c].items():
            if ".lora_A." in k:
                np.testing.assert_array_equal(v, shared[k])
