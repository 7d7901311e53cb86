"""TAP's client stages: the gate on hand-built losses, and accept / distill on the tiny BERT."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from fedbip_cli.core.site.margin_gate import decide, margin_for
from helpers import client_rows, write_jsonl


def test_gate_is_strict_seeds_first_and_uses_per_task_margins():
    assert decide("t", 1.0, None, 0.01).action == "seed"
    assert decide("t", 0.98, 1.0, 0.01).action == "replace"
    assert decide("t", 0.99, 1.0, 0.01).action == "keep"  # equal after the margin: not clearly better
    assert decide("t", 1.2, 1.0, 0.0).action == "keep"
    margins = {"summarize": 0.005}
    assert margin_for("summarize", 0.01, margins) == 0.005 and margin_for("qa", 0.01, margins) == 0.01
    assert decide("summarize", 0.994, 1.0, margin_for("summarize", 0.01, margins)).action == "replace"
    assert decide("qa", 0.994, 1.0, margin_for("qa", 0.01, margins)).action == "keep"


def federated_round(cli, ws, clients=("a", "b")):
    for c in clients:
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 0, "-w", ws).exit_code == 0
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0


def test_accept_logs_every_decision_and_distill_lowers_kl(cli, make_workspace):
    ws = make_workspace({"a": ["sport", "money"], "b": ["tech", "money"]})
    federated_round(cli, ws)
    r = cli("accept", "-c", "a", "-r", 1, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    assert [d["action"] for d in first] == ["seed"] and first[0]["personal_loss"] is None
    r = cli("accept", "-c", "a", "-r", 1, "-w", ws, "--json", "--margin", 1000)
    assert json.loads(r.stdout)[0]["action"] == "keep"
    r = cli("accept", "-c", "a", "-r", 1, "-w", ws, "--json", "--margin", -1000)
    assert json.loads(r.stdout)[0]["action"] == "replace"
    r = cli("distill", "-c", "a", "-r", 1, "-w", ws, "--json", "--set", "tap.distill_steps=20",
            "--set", "tap.distill_batch_size=8", "--set", "tap.kd_weight=5")
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["kl_after"] < res["kl_before"]
    log = [json.loads(line) for line in (ws / "personal/a/decisions.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in log] == ["accept", "accept", "accept", "distill"]
    assert all("received_loss" in row and "personal_loss" in row for row in log[:3])
    r = cli("eval", "-c", "a", "-r", 1, "-w", ws, "--adapter", ws / "personal/a/default/adapter", "--json")
    assert r.exit_code == 0, r.output


def test_personal_adapter_never_leaves_the_site(cli, make_workspace):
    ws = make_workspace({"a": ["sport", "money"], "b": ["tech", "money"]})
    federated_round(cli, ws)
    assert cli("accept", "-c", "a", "-r", 1, "-w", ws).exit_code == 0
    assert cli("distill", "-c", "a", "-r", 1, "-w", ws, "--set", "tap.distill_steps=5").exit_code == 0
    assert cli("finetune", "-c", "a", "-r", 1, "-w", ws).exit_code == 0
    assert cli("taskvec", "-c", "a", "-r", 1, "-w", ws).exit_code == 0
    personal = load_file(str(ws / "personal/a/default/adapter/adapter_model.safetensors"))
    tau = load_file(str(ws / "rounds/0001/deltas/a.safetensors"))
    start = load_file(str(ws / "rounds/0001/start/a/adapter_model.safetensors"))
    trained = load_file(str(ws / "rounds/0001/trained/a/adapter_model.safetensors"))
    for k in tau:
        np.testing.assert_allclose(tau[k], trained[k] - start[k], atol=1e-7)
    assert any(not np.allclose(personal[k], start[k]) for k in personal)  # distillation changed it
    digest = json.dumps(json.loads((ws / "rounds/0001/manifest.json").read_text()))
    from fedbip_cli.core.files.hashes import sha256_file

    assert sha256_file(ws / "personal/a/default/adapter/adapter_model.safetensors") not in digest
    assert not any("personal" in str(p.relative_to(ws)) for p in (ws / "rounds").rglob("*"))


def test_distill_is_deterministic(cli, make_workspace, tmp_path):
    outs = []
    for name in ("one", "two"):
        ws = make_workspace({"a": ["sport", "money"], "b": ["tech"]}, folder=tmp_path / name)
        federated_round(cli, ws)
        assert cli("distill", "-c", "a", "-r", 1, "-w", ws, "--set", "tap.distill_steps=5").exit_code == 0
        outs.append((ws / "personal/a/default/adapter/adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_per_task_personal_adapters_and_margins(cli, make_workspace):
    ws = make_workspace({"a": ["sport", "money"], "b": ["tech"]})
    rows = client_rows(["sport", "money"], 12, 0)
    for row in rows:
        row["task"] = "scores" if row["label"] == "sport" else "markets"
    write_jsonl(ws / "data/a/train.jsonl", rows)
    text = (ws / "fedbip.yaml").read_text().replace("task_field: null", "task_field: task")
    text = text.replace("margins: {}", "margins: {scores: 1000.0}")
    (ws / "fedbip.yaml").write_text(text)
    federated_round(cli, ws)
    assert cli("accept", "-c", "a", "-r", 1, "-w", ws).exit_code == 0  # seeds both tasks
    r = cli("accept", "-c", "a", "-r", 1, "-w", ws, "--json")
    decisions = {d["task"]: d for d in json.loads(r.stdout)}
    assert set(decisions) == {"markets", "scores"}
    assert decisions["scores"]["margin"] == 1000.0 and decisions["scores"]["action"] == "keep"
    assert decisions["markets"]["margin"] == 0.01
    assert (ws / "personal/a/scores/adapter").is_dir() and (ws / "personal/a/markets/adapter").is_dir()
