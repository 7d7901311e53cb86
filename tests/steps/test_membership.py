"""Stragglers and late joiners, through the real commands on the tiny BERT."""

from __future__ import annotations

import json


def test_straggler_keeps_its_adapter_and_late_joiner_starts_from_global(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["sport"], "c": ["money"], "late": ["tech"]}, n_train=6)
    for c in "abc":
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 0, "-w", ws).exit_code == 0
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    # round 1: c does not show up
    for c in "ab":
        assert cli("finetune", "-c", c, "-r", 1, "-w", ws).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 1, "-w", ws).exit_code == 0
    r = cli("aggregate", "-r", 1, "-w", ws, "--min-clients", 2, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads((ws / "rounds/0001/weights.json").read_text())
    assert doc["clients"] == ["a", "b"] and doc["kept_previous_adapter"] == ["c"]
    assert doc["join_from_global"] == ["late"]

    def same(p, q):
        return (p / "adapter_model.safetensors").read_bytes() == (q / "adapter_model.safetensors").read_bytes()

    assert same(ws / "rounds/0002/start/c", ws / "rounds/0001/start/c")
    manifest = json.loads((ws / "rounds/0001/manifest.json").read_text())["steps"]["aggregate"]
    assert manifest["kept_previous_adapter"] == ["c"] and manifest["join_from_global"] == ["late"]
    # the late joiner trains from the global adapter of the round it joins
    r = cli("finetune", "-c", "late", "-r", 2, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["start"].endswith("rounds/0002/global")
    assert cli("taskvec", "-c", "late", "-r", 2, "-w", ws).exit_code == 0


def test_privacy_on_records_epsilon(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]}, n_train=6)
    text = (ws / "fedbip.yaml").read_text().replace("  enabled: false", "  enabled: true")
    (ws / "fedbip.yaml").write_text(text)
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    assert cli("taskvec", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    step = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["taskvec/a"]
    assert step["privacy"]["noise_multiplier"] == 1.0 and step["privacy"]["epsilon_cumulative"] > 0
