"""fedbip on Flower with causal-lm sites (the paper's NLP setting): two sites with one instruction task
each on the tiny Llama, simulated; the coordinator gets their task vectors and their exact match,
token F1 and response loss. Skipped when Flower is not installed."""

from __future__ import annotations

import json
import os

import pytest

from helpers import build_lm_workspace

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
pytest.importorskip("flwr")
pytest.importorskip("flwr.serverapp.strategy")

SITES = {"copy": "copy", "first": "first"}


def test_flower_simulation_with_causal_lm_sites(tiny_llama, tmp_path, cli):
    from flwr.simulation import run_simulation

    from fedbip_cli.flower.client import make_client_app
    from fedbip_cli.flower.server import make_server_app

    for folder in [*SITES, "coordinator"]:
        build_lm_workspace(tmp_path / folder, tiny_llama, SITES, **{"max_steps: null": "max_steps: 2"})
    run_simulation(
        server_app=make_server_app(**{"workspace": str(tmp_path / "coordinator"), "num-server-rounds": 1,
                                      "plot": False, "min-available-nodes": len(SITES)}),
        client_app=make_client_app(**{"sim-root": str(tmp_path), "sim-sites": ",".join(SITES)}),
        num_supernodes=len(SITES),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1}},
    )
    coord = tmp_path / "coordinator"
    rd = coord / "rounds/0000"
    assert sorted(p.stem for p in (rd / "deltas").glob("*.safetensors")) == sorted(SITES)
    assert cli("verify", "-r", 0, "-w", coord).exit_code == 0
    for c in SITES:
        site = tmp_path / c
        delta = f"deltas/{c}.safetensors"
        assert (site / "rounds/0000" / delta).read_bytes() == (rd / delta).read_bytes()
        (line,) = [json.loads(x) for x in (site / "metrics.jsonl").read_text().splitlines()]
        assert line["round"] == 1 and line["examples"] == 4
        assert {"rougeL", "exact_match", "token_f1", "loss", "perplexity"} <= set(line)
    evals = [json.loads(x) for x in (coord / "metrics.jsonl").read_text().splitlines()]
    assert sorted(x["client"] for x in evals) == sorted(SITES)
    for x in evals:  # the coordinator's log carries the sites' causal-lm scores, not accuracy
        assert set(x) >= {"rougeL", "rouge1", "rouge2", "exact_match", "token_f1", "loss"} and "accuracy" not in x
        assert 0 <= x["exact_match"] <= 1 and 0 <= x["token_f1"] <= 1 and x["loss"] > 0
