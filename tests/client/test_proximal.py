"""FedAMP's client term: (mu / 2) ||theta - start||^2 with mu = lambda / alpha_K pulls training towards the
start adapter (u_i); on the tiny random BERT through `fedbip finetune`."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from fedbip_cli.workspace.layout import Workspace


def distance_from_start(ws: Workspace) -> float:
    start = load_file(str(ws.initial_dir / "adapter_model.safetensors"))
    trained = load_file(str(ws.trained_dir(0, "a") / "adapter_model.safetensors"))
    return float(sum(((trained[k].astype(np.float64) - start[k]) ** 2).sum() for k in start))


def test_proximal_pull_keeps_training_near_the_start(cli, make_workspace, tmp_path):
    runs = {}
    for lamda in ("0.0", "1.0e+4"):
        ws_path = make_workspace({"a": ["sport", "money"], "b": ["tech"]}, folder=tmp_path / f"ws{lamda}",
                                 **{"strategy: fedbip": "strategy: fedamp", "lamda: 1.0": f"lamda: {lamda}"})
        r = cli("finetune", "-c", "a", "-r", 0, "-w", ws_path)
        assert r.exit_code == 0, r.output
        ws = Workspace.open(ws_path)
        info = json.loads((ws.trained_dir(0, "a") / "fedbip_training.json").read_text())
        runs[lamda] = (distance_from_start(ws), info.get("proximal", 0.0))
    assert runs["0.0"][1] == 0.0 and runs["1.0e+4"][1] == 1.0e4  # alpha_k null: mu = lambda
    assert runs["1.0e+4"][0] < 0.5 * runs["0.0"][0]


def test_changing_lambda_retrains_instead_of_skipping(cli, make_workspace):
    ws_path = make_workspace({"a": ["sport"], "b": ["tech"]}, **{"strategy: fedbip": "strategy: fedamp"})
    assert cli("finetune", "-c", "a", "-r", 0, "-w", ws_path).exit_code == 0
    r = cli("finetune", "-c", "a", "-r", 0, "-w", ws_path, "--set", "aggregation.lamda=5", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout).get("skipped") is not True
