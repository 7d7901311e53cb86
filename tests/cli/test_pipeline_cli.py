"""The file pipeline end to end through the real commands, on a tiny random BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file


def run_round(cli, ws, t, clients):
    for c in clients:
        r = cli("finetune", "-c", c, "-r", t, "-w", ws)
        assert r.exit_code == 0, r.output
        r = cli("taskvec", "-c", c, "-r", t, "-w", ws)
        assert r.exit_code == 0, r.output
    r = cli("similarity", "-r", t, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    sim = json.loads(r.stdout)
    r = cli("aggregate", "-r", t, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    return sim, json.loads(r.stdout)


def test_three_clients_two_rounds(cli, make_workspace, tiny_bert):
    # Prepare
    ws = make_workspace({"a": ["sport", "money"], "b": ["sport", "money"], "c": ["tech", "money"]})
    clients = ["a", "b", "c"]
    assert cli("initial", "-w", ws).exit_code == 0
    # Execute
    sim0, agg0 = run_round(cli, ws, 0, clients)
    sim1, agg1 = run_round(cli, ws, 1, clients)
    r = cli("eval", "-c", "a", "-r", 2, "-w", ws, "--json")
    # Assert
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["examples"] == 12
    s = np.array(sim1["similarity"])
    assert np.allclose(s, s.T) and np.allclose(np.diag(s), 1.0)
    w = np.array(agg1["weights"])
    assert (w >= 0).all() and np.allclose(w.sum(1), 1.0)
    for t in (0, 1):
        rd = ws / "rounds" / f"{t:04d}"
        for name in ("similarity.json", "similarity.csv", "weights.json", "manifest.json"):
            assert (rd / name).is_file(), name
        manifest = json.loads((rd / "manifest.json").read_text())
        assert {"aggregate", "similarity", "finetune/a", "taskvec/c"} <= set(manifest["steps"])
    assert (ws / "metrics.jsonl").read_text().count("\n") == 1

    # every adapter fedbip wrote loads with PeftModel.from_pretrained into the documented construction
    from peft import PeftModel

    from fedbip_cli.client.tasks.text.model import build_base_model
    from fedbip_cli.workspace.layout import Workspace

    cfg = Workspace.open(ws).config
    folders = [ws / "initial", ws / "rounds/0002/global"] + [ws / f"rounds/{t:04d}/{k}/{c}" for t in (1, 2)
                                                             for k in ("start",) for c in clients]
    folders += [ws / f"rounds/0001/trained/{c}" for c in clients]
    for folder in folders:
        model = PeftModel.from_pretrained(build_base_model(cfg, 3), folder)
        sd = load_file(str(folder / "adapter_model.safetensors"))
        lora_b = [k for k in sd if "lora_B" in k][0]
        live = dict(model.named_parameters())[lora_b.replace("lora_B.weight", "lora_B.default.weight")]
        assert np.allclose(live.detach().numpy(), sd[lora_b])


def test_task_vector_is_trained_minus_start_with_metadata(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    assert cli("taskvec", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    from safetensors import safe_open

    path = ws / "rounds/0000/deltas/a.safetensors"
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        tau = {k: f.get_tensor(k) for k in f.keys()}
    start = load_file(str(ws / "initial/adapter_model.safetensors"))
    trained = load_file(str(ws / "rounds/0000/trained/a/adapter_model.safetensors"))
    assert set(tau) == set(start)
    for k in tau:
        np.testing.assert_allclose(tau[k], trained[k] - start[k], atol=1e-7)
    assert meta["client"] == "a" and meta["round"] == "0" and meta["space"] == "factor"
    assert int(meta["num_examples"]) == 12 and len(meta["start_sha256"]) == 64
    assert json.loads(meta["lora_config"])["r"] == 4


def test_finetune_is_deterministic(cli, make_workspace, tmp_path):
    a = make_workspace({"a": ["sport", "tech"], "b": ["money"]}, folder=tmp_path / "one")
    b = make_workspace({"a": ["sport", "tech"], "b": ["money"]}, folder=tmp_path / "two")
    for ws in (a, b):
        assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    fa = (a / "rounds/0000/trained/a/adapter_model.safetensors").read_bytes()
    fb = (b / "rounds/0000/trained/a/adapter_model.safetensors").read_bytes()
    assert fa == fb
    initial = "initial/adapter_model.safetensors"
    assert (a / initial).read_bytes() == (b / initial).read_bytes()


def test_rerun_finetune_is_skipped_unless_forced(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    before = (ws / "rounds/0000/trained/a/adapter_model.safetensors").stat().st_mtime_ns
    r = cli("finetune", "-c", "a", "-r", 0, "-w", ws)
    assert r.exit_code == 0 and "already trained" in r.output
    assert (ws / "rounds/0000/trained/a/adapter_model.safetensors").stat().st_mtime_ns == before
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws, "--force").exit_code == 0


@pytest.mark.parametrize("strategy", ["fedbip", "fedbip-layer", "fedavg", "local", "fedamp"])
def test_every_strategy_through_the_cli(cli, make_workspace, strategy):
    ws = make_workspace({"a": ["sport"], "b": ["sport"], "c": ["tech"]}, n_train=6)
    for c in "abc":
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 0, "-w", ws).exit_code == 0
    r = cli("aggregate", "-r", 0, "-w", ws, "--strategy", strategy, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads((ws / "rounds/0000/weights.json").read_text())
    assert doc["strategy"] == strategy and len(doc["weights"]) == 3
    if strategy == "local":  # local: the next start is exactly the trained adapter
        for c in "abc":
            got = load_file(str(ws / f"rounds/0001/start/{c}/adapter_model.safetensors"))
            want = load_file(str(ws / f"rounds/0000/trained/{c}/adapter_model.safetensors"))
            for k in want:
                np.testing.assert_allclose(got[k], want[k], atol=1e-6)
