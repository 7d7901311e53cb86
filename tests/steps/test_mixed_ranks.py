"""Clients of different LoRA ranks and alphas: factor-space padding (core/engine/mixed_ranks.py) checked against the
dense weighted sums of ΔW = s·B·A, computed here; then the whole pipeline on the tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedbip_cli.core.engine.mixed_ranks import fit_factor, product_norm2

MODULES = ["base_model.model.layer.0.q", "base_model.model.layer.0.v"]
HEAD = "base_model.model.classifier.weight"
D_IN, D_OUT = 24, 20
CLIENTS = {"a": (2, 4.0), "b": (4, 8.0), "c": (8, 4.0)}  # name: (rank, alpha); c is the reference


def scale(r: int, alpha: float) -> float:
    return alpha / r


def delta_w(folder: Path) -> dict[str, np.ndarray]:
    """ΔW of every module of an adapter folder, dense, from its files and its own config."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    s = cfg["lora_alpha"] / cfg["r"]
    return {m: s * t[f"{m}.lora_B.weight"].astype(np.float64) @ t[f"{m}.lora_A.weight"] for m in MODULES}


def cut(w: dict[str, np.ndarray], folder: Path, r: int) -> dict[str, np.ndarray]:
    """ΔW of an adapter keeping only its first r components."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    s = cfg["lora_alpha"] / cfg["r"]
    return {m: s * t[f"{m}.lora_B.weight"][:, :r].astype(np.float64) @ t[f"{m}.lora_A.weight"][:r] for m in MODULES}


def write_client(root: Path, name: str, r: int, alpha: float, a_full: dict, rng: np.random.Generator,
                 freeze_a: bool, space: str) -> None:
    """Start adapter (nested A: first r rows of a_full; non-zero B, as in a later round), trained
    adapter and task vector (stored in `space`), written with the pipeline's own writers."""
    from fedbip_cli.core.files.adapter import read_adapter, save_adapter
    from fedbip_cli.core.files.hashes import sha256_file
    from fedbip_cli.core.files.taskvec import TaskVectorMeta, write_taskvec

    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": False, "target_modules": ["q", "v"],
              "modules_to_save": ["classifier"], "rank_pattern": {}, "alpha_pattern": {}, "task_type": None}
    start = {HEAD: rng.standard_normal((3, D_IN)).astype(np.float32)}
    for m in MODULES:
        start[f"{m}.lora_A.weight"] = a_full[m][:r].copy()
        start[f"{m}.lora_B.weight"] = rng.standard_normal((D_OUT, r)).astype(np.float32)
    trained = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.5 for k, v in start.items()}
    if freeze_a:
        trained.update({k: v for k, v in start.items() if "lora_A" in k})
    start_dir, trained_dir = root / "rounds/0000/start" / name, root / "rounds/0000/trained" / name
    save_adapter(start_dir, config, start)
    save_adapter(trained_dir, config, trained)
    s, t = read_adapter(start_dir), read_adapter(trained_dir)
    meta = TaskVectorMeta(name, 0, space, "fp", sha256_file(s.weights_path), 10 * r, s.lora_signature())
    (root / "rounds/0000/deltas").mkdir(parents=True, exist_ok=True)
    write_taskvec(s, t, root / "rounds/0000/deltas" / f"{name}.safetensors", meta)


@pytest.fixture
def mixed_round(tmp_path):
    """A coordinator workspace with three clients of ranks 2, 4, 8 and different alphas."""

    def build(freeze_a: bool, space: str = "factor") -> Path:
        """`space`: how the task vector files are stored (factor: A, B differences; delta: U, V)."""
        from fedbip_cli.workspace.template import render

        root = tmp_path / f"coordinator-{freeze_a}-{space}"
        root.mkdir()
        (root / "fedbip.yaml").write_text(render(clients={c: {"train": f"{c}.jsonl"} for c in CLIENTS}))
        rng = np.random.default_rng(0)
        a_full = {m: rng.standard_normal((8, D_IN)).astype(np.float32) for m in MODULES}
        for name, (r, alpha) in CLIENTS.items():
            write_client(root, name, r, alpha, a_full, rng, freeze_a, space)
        return root

    return build


def test_padding_keeps_every_delta_w_and_cutting_undoes_it():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, D_IN)), rng.standard_normal((D_OUT, 3))
    a8, b8 = fit_factor(a, "A", 8, 0, 0, fill=rng.standard_normal((8, D_IN))), fit_factor(b, "B", 8, 2.0, 0.5)
    assert np.allclose(0.5 * b8 @ a8, 2.0 * b @ a, atol=1e-5)
    assert np.allclose(fit_factor(a8, "A", 3, 0, 0), a) and np.allclose(fit_factor(b8, "B", 3, 0.5, 2.0), b, atol=1e-6)
    assert product_norm2(b, a) == pytest.approx(np.sum((b @ a) ** 2))


def test_frozen_nested_a_aggregates_to_the_dense_weighted_sum(mixed_round):
    # Prepare
    from fedbip_cli.core.strategies import make_strategy
    from fedbip_cli.steps.coordinator import aggregate
    from fedbip_cli.workspace.layout import Workspace

    root = mixed_round(freeze_a=True)
    ws = Workspace.open(root)
    rd = root / "rounds/0000"
    starts = {c: delta_w(rd / "start" / c) for c in CLIENTS}
    trained = {c: delta_w(rd / "trained" / c) for c in CLIENTS}
    n = np.array([10 * r for r, _ in CLIENTS.values()], dtype=float)
    # Execute
    aggregate(ws, 0, strategy="fedavg", force=True)
    glob = delta_w(root / "rounds/0001/global")
    avg = {c: delta_w(root / "rounds/0001/start" / c) for c in CLIENTS}
    shapes = {c: (json.loads((root / "rounds/0001/start" / c / "adapter_config.json").read_text()),
                  load_file(str(root / "rounds/0001/start" / c / "adapter_model.safetensors"))) for c in CLIENTS}
    fed = aggregate(ws, 0, strategy=make_strategy("fedbip", negative="softmax"), force=True)  # all weights > 0
    p = fed.weights
    fed_w = {c: delta_w(root / "rounds/0001/start" / c) for c in CLIENTS}
    doc = json.loads((rd / "weights.json").read_text())
    # Assert: fedavg's global (reference rank 8) is exactly sum_k n_k/N s_k B_k A_k, and each client
    # receives the same sum over the first r_i components of every client
    w = n / n.sum()
    clients = list(CLIENTS)
    for m in MODULES:
        assert np.allclose(glob[m], sum(wk * trained[c][m] for wk, c in zip(w, clients)), atol=1e-5)
        for c, (r, _) in CLIENTS.items():
            dense = sum(wk * cut({}, rd / "trained" / o, r)[m] for wk, o in zip(w, clients))
            assert np.allclose(avg[c][m], dense, atol=1e-5)
    # fedbip: client i gets ΔW(start_i) + sum_k p_ik (ΔW(trained_k) - ΔW(start_k)) (exact at rank 8), cut
    # to the first r_i components of every client; the share cut off is what weights.json reports
    lost = {}
    for i, c in enumerate(clients):
        r = CLIENTS[c][0]
        dropped2 = total2 = 0.0
        for m in MODULES:
            exact = starts[c][m] + sum(p[i, k] * (trained[o][m] - starts[o][m]) for k, o in enumerate(clients))
            part = cut({}, rd / "start" / c, r)[m] + sum(
                p[i, k] * (cut({}, rd / "trained" / o, r)[m] - cut({}, rd / "start" / o, r)[m])
                for k, o in enumerate(clients))
            assert np.allclose(fed_w[c][m], part, atol=1e-5)
            assert r < 8 or np.allclose(fed_w[c][m], exact, atol=1e-5)
            dropped2, total2 = dropped2 + np.sum((exact - part) ** 2), total2 + np.sum(exact ** 2)
        lost[c] = np.sqrt(dropped2 / total2)
    # outputs at each client's own rank and alpha
    for c, (r, alpha) in CLIENTS.items():
        cfg, t = shapes[c]
        assert (cfg["r"], cfg["lora_alpha"]) == (r, alpha)
        assert t[f"{MODULES[0]}.lora_A.weight"].shape == (r, D_IN)
        assert t[f"{MODULES[0]}.lora_B.weight"].shape == (D_OUT, r)
    assert doc["ranks"] == {"a": 2, "b": 4, "c": 8} and doc["common_rank"] == 8 and doc["reference"] == "c"
    assert set(doc["rank_truncation"]) == {"a", "b"}
    assert all(doc["rank_truncation"][c] == pytest.approx(lost[c], abs=1e-5) for c in "ab")
    assert lost["a"] > lost["b"] > 0 and lost["c"] < 1e-6


def test_trained_a_mixes_in_the_padded_space_and_similarity_runs(mixed_round):
    from fedbip_cli.core.files.adapter import read_adapter
    from fedbip_cli.steps.coordinator import aggregate, similarity
    from fedbip_cli.steps.coordinator.inputs import load_round
    from fedbip_cli.workspace.layout import Workspace

    root = mixed_round(freeze_a=False)
    ws = Workspace.open(root)
    sim = similarity(ws, 0, plot=False)
    assert np.allclose(np.diag(sim.matrix), 1) and np.allclose(sim.matrix, sim.matrix.T)
    res = aggregate(ws, 0, strategy="fedamp")
    assert np.allclose(res.weights.sum(1), 1)
    assert read_adapter(root / "rounds/0001/start/a").rank(MODULES[0]) == 2
    # task vectors enter padded with zeros, B scaled by s_k / s_R
    data = load_round(ws, 0)
    assert type(data.padding).__name__ == "MixedRanks" and data.clients[data.reference] == "c"
    name = f"{MODULES[0]}.lora_B.weight"
    padded = data.reader().task_stack(name)
    tau_a = load_file(str(root / "rounds/0000/deltas/a.safetensors"))[name]
    assert padded.shape == (3, D_OUT, 8) and not padded[0][:, 2:].any()
    assert np.allclose(padded[0][:, :2], tau_a * (scale(2, 4.0) / scale(8, 4.0)))
    # start adapters pad A with the reference's rows, so averaging A's does not shrink them
    a_name = f"{MODULES[0]}.lora_A.weight"
    starts = data.reader().start_groups_stack(a_name)[data.groups[0]]
    ref = load_file(str(root / "rounds/0000/start/c/adapter_model.safetensors"))[a_name]
    assert np.array_equal(starts[0][2:], ref[2:]) and np.array_equal(starts[2], ref)


def test_tiny_bert_clients_of_three_ranks_end_to_end(cli, make_workspace):
    # Prepare: b keeps lora.r (4), a and c choose their own rank (and c its alpha)
    ws = make_workspace({"a": ["sport", "money"], "b": ["sport", "money"], "c": ["tech", "money"]})
    cfg = (ws / "fedbip.yaml").read_text()
    cfg = cfg.replace("train: data/a/train.jsonl", "train: data/a/train.jsonl\n    lora_r: 2")
    cfg = cfg.replace("train: data/c/train.jsonl", "train: data/c/train.jsonl\n    lora_r: 8\n    lora_alpha: 8.0")
    (ws / "fedbip.yaml").write_text(cfg)
    # Execute
    assert cli("initial", "-w", ws).exit_code == 0
    for c in "abc":
        for step in ("finetune", "taskvec"):
            r = cli(step, "-c", c, "-r", 0, "-w", ws)
            assert r.exit_code == 0, r.output
    for step in ("similarity", "aggregate"):
        r = cli(step, "-r", 0, "-w", ws, "--json")
        assert r.exit_code == 0, r.output
    r = cli("eval", "-c", "a", "-r", 1, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    r = cli("finetune", "-c", "a", "-r", 1, "-w", ws)
    assert r.exit_code == 0, r.output
    # Assert: every client's adapters at its own rank, the round-0 A's nested, all loadable by PEFT
    from peft import PeftModel
    from safetensors.torch import load_file as load_torch

    from fedbip_cli.client.tasks.text.model import build_base_model
    from fedbip_cli.workspace.layout import Workspace

    cfg = Workspace.open(ws).config
    a0 = load_file(str(ws / "rounds/0000/start/a/adapter_model.safetensors"))
    b0 = load_file(str(ws / "initial/adapter_model.safetensors"))
    c0 = load_file(str(ws / "rounds/0000/start/c/adapter_model.safetensors"))
    name = next(k for k in a0 if "lora_A" in k)
    assert a0[name].shape[0] == 2 and b0[name].shape[0] == 4 and c0[name].shape[0] == 8
    assert np.array_equal(c0[name][:4], b0[name]) and np.array_equal(c0[name][:2], a0[name])
    rank = {"a": 2, "b": 4, "c": 8}
    for c in "abc":
        for folder in (ws / "rounds/0000/trained" / c, ws / "rounds/0001/start" / c):
            model = PeftModel.from_pretrained(build_base_model(cfg, 3), folder)
            assert model.peft_config["default"].r == rank[c]
            live = dict(model.named_parameters())
            for k, v in load_torch(str(folder / "adapter_model.safetensors")).items():
                if "lora_" in k:
                    assert live[k.replace(".weight", ".default.weight")].shape == v.shape
                    assert v.shape[0 if "lora_A" in k else 1] == rank[c]
    assert json.loads((ws / "rounds/0001/global/adapter_config.json").read_text())["r"] == 8


def best_rank(w: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


@pytest.mark.parametrize("storage", ["factor", "delta"])
def test_delta_space_gives_each_client_the_best_approximation_at_its_rank(mixed_round, storage):
    # Prepare: trained A's (no frozen A): only the delta space is exact
    from fedbip_cli.core.strategies import make_strategy
    from fedbip_cli.steps.coordinator import aggregate, similarity
    from fedbip_cli.workspace.layout import Workspace

    root = mixed_round(freeze_a=False, space=storage)
    ws = Workspace.open(root)
    rd = root / "rounds/0000"
    clients = list(CLIENTS)
    starts = {c: delta_w(rd / "start" / c) for c in clients}
    trained = {c: delta_w(rd / "trained" / c) for c in clients}
    heads = {c: load_file(str(rd / "trained" / c / "adapter_model.safetensors"))[HEAD].astype(np.float64)
             - load_file(str(rd / "start" / c / "adapter_model.safetensors"))[HEAD] for c in clients}
    # Execute
    sim = similarity(ws, 0, space="delta", plot=False)
    res = aggregate(ws, 0, strategy=make_strategy("fedbip", negative="softmax"), space="delta", force=True)
    doc = json.loads((rd / "weights.json").read_text())
    # Assert: cosines of the exact task vectors (every module's ΔW change, and the head)
    taus = [np.concatenate([(trained[c][m] - starts[c][m]).ravel() for m in MODULES] + [heads[c].ravel()])
            for c in clients]
    dense_cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in taus] for a in taus])
    assert np.allclose(sim.matrix, dense_cos, atol=1e-5)
    # every client receives the best rank-r_i approximation of its exact personalized sum
    p = res.weights
    lost = {}
    for i, c in enumerate(clients):
        r = CLIENTS[c][0]
        got = delta_w(rd.parent / "0001/start" / c)
        d2 = t2 = 0.0
        for m in MODULES:
            exact = starts[c][m] + sum(p[i, k] * (trained[o][m] - starts[o][m]) for k, o in enumerate(clients))
            want = best_rank(exact, r)
            assert np.linalg.norm(got[m] - want) <= 1e-4 * np.linalg.norm(want), (c, m)
            top = best_rank(exact, 8)
            d2, t2 = d2 + np.sum((top - want) ** 2), t2 + np.sum(top ** 2)
        lost[c] = np.sqrt(d2 / t2)
    n = np.array([10 * r for r, _ in CLIENTS.values()], dtype=float)
    glob = delta_w(rd.parent / "0001/global")
    for m in MODULES:
        want = best_rank(sum(w * trained[c][m] for w, c in zip(n / n.sum(), clients)), 8)
        assert np.linalg.norm(glob[m] - want) <= 1e-4 * np.linalg.norm(want)
    assert doc["space"] == "delta" and doc["ranks"] == {"a": 2, "b": 4, "c": 8}
    assert all(doc["rank_truncation"][c] == pytest.approx(lost[c], abs=1e-4) for c in "ab")
