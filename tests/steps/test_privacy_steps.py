"""Differential privacy through the real commands (tiny BERT): both spaces reach the coordinator, nothing
computed from the unnoised update leaves the site, every release (reruns included) is counted."""

from __future__ import annotations

import json
import shutil

import pytest

from fedbip_cli.core.files import safetensors_io


def dp_workspace(make_workspace, space: str):
    ws = make_workspace({"a": ["sport"], "b": ["money"]}, n_train=6)
    text = (ws / "fedbip.yaml").read_text().replace("  enabled: false", "  enabled: true")
    text = text.replace("space: factor", f"space: {space}")
    (ws / "fedbip.yaml").write_text(text)
    return ws


@pytest.mark.parametrize("space", ["factor", "delta"])
def test_dp_round_aggregates_in_both_spaces(cli, make_workspace, space):
    ws = dp_workspace(make_workspace, space)
    for c in "ab":
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws).exit_code == 0
        r = cli("taskvec", "-c", c, "-r", 0, "-w", ws, "--space", space)
        assert r.exit_code == 0, r.output
    header = safetensors_io.read_header(ws / "rounds/0000/deltas/a.safetensors")
    assert header.metadata["num_examples"] == "1" and header.metadata["space"] == space  # the count stays home
    r = cli("aggregate", "-r", 0, "-w", ws, "--space", space)
    assert r.exit_code == 0, r.output  # delta space: the start halves were left as the coordinator checks them
    step = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["taskvec/a"]["privacy"]
    assert "norm_before_clipping" not in step and step["releases"] == 1
    assert step["rho_this_release"] == 2.0  # sensitivity 2C, sigma = 1: rho = 4 / 2


def test_reruns_are_counted(cli, make_workspace):
    ws = dp_workspace(make_workspace, "factor")
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    for _ in range(3):
        assert cli("taskvec", "-c", "a", "-r", 0, "-w", ws, "--force").exit_code == 0  # a rerun releases again
    step = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["taskvec/a"]["privacy"]
    assert step["releases"] == 3 and step["rho_total"] == 3 * step["rho_this_release"]
    assert len((ws / "privacy/a.jsonl").read_text().splitlines()) == 3


def test_skipped_finetune_checks_its_outputs(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]}, n_train=6)
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws).exit_code == 0
    r = cli("finetune", "-c", "a", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout).get("skipped") is True
    (ws / "rounds/0000/trained/a/adapter_model.safetensors").unlink()  # the info file stays behind
    r = cli("finetune", "-c", "a", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    assert not json.loads(r.stdout).get("skipped")
    assert (ws / "rounds/0000/trained/a/adapter_model.safetensors").is_file()
    shutil.copy(ws / "rounds/0000/trained/a/adapter_model.safetensors", ws / "x")  # tampered in place
    data = bytearray((ws / "x").read_bytes())
    data[-1] ^= 1
    (ws / "rounds/0000/trained/a/adapter_model.safetensors").write_bytes(bytes(data))
    r = cli("finetune", "-c", "a", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0 and not json.loads(r.stdout).get("skipped")
