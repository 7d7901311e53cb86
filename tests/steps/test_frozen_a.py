"""FFA-LoRA (lora.freeze_a): training leaves A byte-identical, and then factor space is exact: the
factor-space and delta-space aggregates are the same weight change. On the tiny random BERT."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from fedbip_cli.core.files.adapter import lora_modules, read_adapter
from fedbip_cli.core.strategies import Mixing, Strategy
from fedbip_cli.steps import coordinator
from fedbip_cli.workspace.layout import Workspace


class Fixed(Strategy):
    name = "fixed"

    def __init__(self, weights: np.ndarray) -> None:
        self._weights = weights

    def mixing(self, stats):
        return Mixing(self._weights, mode="update")


def weight_change(folder) -> dict[str, np.ndarray]:
    ad = read_adapter(folder)
    t = {k: v.astype(np.float64) for k, v in load_file(str(ad.weights_path)).items()}
    out = {m: ad.scale(m) * t[f"{m}.lora_B.weight"] @ t[f"{m}.lora_A.weight"] for m in lora_modules(t)}
    return out | {k: v for k, v in t.items() if ".lora_" not in k}


def test_frozen_a_training_and_exact_factor_space(cli, make_workspace):
    ws_path = make_workspace({"a": ["sport", "money"], "b": ["sport"], "c": ["tech"]}, n_train=6,
                             **{"freeze_a: false": "freeze_a: true"})
    clients = ["a", "b", "c"]
    for c in clients:
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws_path).exit_code == 0
        r = cli("taskvec", "-c", c, "-r", 0, "-w", ws_path, "--space", "delta")
        assert r.exit_code == 0, r.output
    ws = Workspace.open(ws_path)
    start = load_file(str(ws.initial_dir / "adapter_model.safetensors"))
    for c in clients:
        trained = load_file(str(ws.trained_dir(0, c) / "adapter_model.safetensors"))
        for k in start:
            if ".lora_A." in k:
                assert trained[k].tobytes() == start[k].tobytes(), (c, k)
            if ".lora_B." in k:
                assert not np.array_equal(trained[k], start[k])  # B did train
    weights = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    got = {}
    for space in ("factor", "delta"):
        res = coordinator.aggregate(ws, 0, strategy=Fixed(weights), space=space, force=True)  # redo the final round
        got[space] = ({c: weight_change(ws.start_dir(1, c)) for c in clients}
                      | {"global": weight_change(ws.global_dir(1))})
        if space == "delta":
            assert all(v["relative"] == 0.0 for v in res.truncation.values())
            for c in clients:  # A is still the shared initial A, byte for byte
                out = load_file(str(ws.start_dir(1, c) / "adapter_model.safetensors"))
                assert all(out[k].tobytes() == start[k].tobytes() for k in start if ".lora_A." in k)
    for c, want in got["factor"].items():
        for k, w in want.items():
            np.testing.assert_allclose(got["delta"][c][k], w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
    # the CLI reports the space
    r = cli("aggregate", "-r", 0, "-w", ws_path, "--space", "delta", "--strategy", "fedavg", "--json", "--force")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["space"] == "delta" and doc["truncation"]["global"]["relative"] == 0.0
