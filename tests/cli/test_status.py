"""`fedbip status` at a coordinator and at a site, read from the files of a synthetic federation."""

from __future__ import annotations

import hashlib
import json
import os

from fedbip_cli.testing.synthetic import Shape, make_round

SMALL = Shape(layers=2, hidden=16, r=2, head=None)


def status(cli, *args):
    r = cli("status", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_coordinator_sees_arrivals_gaps_and_what_runs_next(cli, tmp_path):
    # Prepare: c002's upload is still in progress, c001's has not started
    ws = tmp_path / "ws"
    make_round(ws, 3, SMALL, keep_trained=False)
    deltas = ws / "rounds/0000/deltas"
    os.replace(deltas / "c001.safetensors", tmp_path / "c001.safetensors")
    partial = deltas / "c002.safetensors"
    partial.write_bytes(partial.read_bytes()[:300])
    # Execute
    st = status(cli, "-w", ws)
    # Assert
    assert st["round"] == 0 and st["side"] == "coordinator"
    assert st["arrived"] == ["c000"] and st["missing"] == ["c001"] and st["incomplete"] == ["c002"]
    c0 = st["clients"]["c000"]["taskvec"]
    assert c0["sha256"] == hashlib.sha256((deltas / "c000.safetensors").read_bytes()).hexdigest()
    assert c0["bytes"] == (deltas / "c000.safetensors").stat().st_size and c0["modified"]
    assert st["aggregate"] is None and st["similarity"] is None
    assert "1 of 3 arrived" in st["next"]


def test_after_aggregation_adapters_ready_and_late_vectors_named(cli, tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 3, SMALL, keep_trained=False)
    late = ws / "rounds/0000/deltas/c002.safetensors"
    os.replace(late, tmp_path / "late.safetensors")
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    os.replace(tmp_path / "late.safetensors", late)
    st = status(cli, "-w", ws, "-r", 0)
    assert st["final"] and st["aggregate"]["clients"] == ["c000", "c001"]
    assert st["clients"]["c002"]["taskvec"]["state"] == "late"
    assert st["clients"]["c000"]["next_adapter"].endswith("rounds/0001/start/c000")
    assert "late vectors (c002) count from round 1" in st["next"]
    now = status(cli, "-w", ws)  # the round in progress is now 1
    assert now["round"] == 1 and now["missing"] == ["c000", "c001", "c002"]


def test_site_view_points_to_site_actions(cli, tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 2, SMALL, keep_trained=False)
    st = status(cli, "-w", ws, "-c", "c001")
    assert st["side"] == "site" and list(st["clients"]) == ["c001"]
    assert st["next"] == "fedbip finetune --client c001"  # not trained here (the synthetic round kept no trained/)
    human = cli("status", "-w", ws, "-c", "c001")
    assert human.exit_code == 0 and "next: fedbip finetune --client c001" in human.output
    assert "aggregate:" not in human.output
