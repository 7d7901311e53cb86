"""Final rounds: a late or changed task vector never rewrites a round's adapters without --force (exit 3),
and a forced rerun records in the manifest what changed and why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.testing.synthetic import Shape, make_round


def snapshot(root: Path) -> dict[Path, bytes]:
    """Every file of the workspace but the digest cache (.fedbip/, a private cache of sha256s)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".fedbip" not in p.relative_to(root).parts}


def late_round(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Round 0 aggregated from c000 and c001 while c002's task vector was still on its way."""
    ws = tmp_path / "ws"
    make_round(ws, 3, Shape(layers=2, hidden=16, r=2, head=None), keep_trained=False)
    late = ws / "rounds/0000/deltas/c002.safetensors"
    parked = tmp_path / "c002.safetensors"
    os.replace(late, parked)
    return ws, late, parked


def test_late_vector_is_a_conflict_that_changes_nothing(cli, tmp_path):
    # Prepare
    ws, late, parked = late_round(tmp_path)
    first = cli("aggregate", "-r", 0, "-w", ws, "--json")
    assert first.exit_code == 0, first.output
    os.replace(parked, late)  # the straggler arrives after aggregation
    before = snapshot(ws)
    # Execute
    r = cli("aggregate", "-r", 0, "-w", ws)
    # Assert
    assert r.exit_code == 3, r.output
    text = " ".join(r.output.split())
    assert "round 0 is final" in text and "arrived late: c002" in text and "--force" in text
    assert snapshot(ws) == before  # adapters, weights.json and manifest untouched; no lock file left


def test_changed_vector_is_a_conflict_too(cli, tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 3, Shape(layers=2, hidden=16, r=2, head=None), keep_trained=False)
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    path = ws / "rounds/0000/deltas/c001.safetensors"
    arrays, meta = safetensors_io.load(path)
    safetensors_io.save(path, {k: 2 * v for k, v in arrays.items()}, meta)  # a site re-sent another vector
    before = snapshot(ws)
    r = cli("aggregate", "-r", 0, "-w", ws)
    assert r.exit_code == 3 and "changed: c001" in " ".join(r.output.split())
    assert snapshot(ws) == before
    r = cli("aggregate", "-r", 0, "-w", ws, "--strategy", "fedavg")  # other settings would rewrite them too
    assert r.exit_code == 3 and "strategy 'fedbip' -> 'fedavg'" in " ".join(r.output.split())


def test_forced_rerun_records_what_changed_and_why(cli, tmp_path):
    # Prepare
    ws, late, parked = late_round(tmp_path)
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    first = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["aggregate"]
    os.replace(parked, late)
    # Execute
    r = cli("aggregate", "-r", 0, "-w", ws, "--force", "--json")
    # Assert
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["clients"] == ["c000", "c001", "c002"] and np.allclose(np.array(res["weights"]).sum(1), 1)
    entry = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["aggregate"]
    assert entry["rerun"]["forced"] is True and entry["rerun"]["added"] == ["c002"]
    assert "c002" in entry["rerun"]["reason"]
    assert entry["history"][-1]["clients"] == ["c000", "c001"]
    assert entry["history"][-1]["outputs"] == first["outputs"]
    # and the round is final again: an unchanged rerun is a verified no-op
    again = cli("aggregate", "-r", 0, "-w", ws, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] is True


def test_aggregate_json_carries_weights_json(cli, tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 3, Shape(layers=2, hidden=16, r=2, head=None), keep_trained=False)
    r = cli("aggregate", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    weights = json.loads((ws / "rounds/0000/weights.json").read_text())
    for key in weights:
        assert key in res, key
    assert res["num_examples"] == weights["num_examples"] and res["clipped"] == weights["clipped"]


def test_similarity_of_a_final_round_with_a_late_vector_is_a_conflict(cli, tmp_path):
    ws, late, parked = late_round(tmp_path)
    assert cli("similarity", "-r", 0, "-w", ws).exit_code == 0
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    again = cli("similarity", "-r", 0, "-w", ws, "--json")  # same vectors: done, nothing rewritten
    os.replace(parked, late)
    before = snapshot(ws)
    r = cli("similarity", "-r", 0, "-w", ws)
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] is True
    assert r.exit_code == 3 and "arrived late: c002" in " ".join(r.output.split())
    assert snapshot(ws) == before
