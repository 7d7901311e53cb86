"""Bad task vectors at the coordinator: exit code 2, one line naming the file and the problem, nothing written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.testing.synthetic import Shape, make_round

A, B, C = "c000", "c001", "c002"


@pytest.fixture
def ws(tmp_path) -> Path:
    root = tmp_path / "ws"
    make_round(root, 3, Shape(layers=2, hidden=16, r=4, head=None), keep_trained=False)
    return root


def rewrite(path: Path, *, meta: dict | None = None, tensors=None, drop: str | None = None) -> None:
    """Rewrite a task vector with changed metadata or tensors."""
    arrays, md = safetensors_io.load(path)
    md.update(meta or {})
    if tensors:
        arrays.update(tensors)
    if drop:
        arrays.pop(drop)
    safetensors_io.save(path, arrays, md)


def files_of(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def expect_error(cli, ws, needle, command="aggregate", code=2):
    """Exit `code` (2 bad input, 75 not ready yet) with `needle` in one line, and nothing written."""
    before = files_of(ws)
    r = cli(command, "-r", 0, "-w", ws)
    assert r.exit_code == code, r.output
    assert needle in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert files_of(ws) == before


NAME = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize("change, needle", [
    (lambda p: p.write_bytes(pickle.dumps({"x": 1})), "is a pickle"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: rewrite(p, meta={"base_fingerprint": "f" * 32}), "another base model"),
    (lambda p: rewrite(p, meta={"round": "4"}), f"metadata says client '{B}' round 4"),
    (lambda p: rewrite(p, meta={"start_sha256": "0" * 64}), "another start adapter"),
    (lambda p: rewrite(p, drop=NAME), "tensors differ"),
    (lambda p: rewrite(p, tensors={"extra.weight": np.ones(3, np.float32)}), "tensors differ"),
    (lambda p: rewrite(p, tensors={NAME: np.ones((8, 16), np.float32)}), "has shape [8, 16]"),
    (lambda p: rewrite(p, meta={"lora_config": json.dumps({"r": 8})}), "LoRA settings differ"),
    (lambda p: rewrite(p, tensors={NAME: np.full((4, 16), np.nan, np.float32)}), "NaN or Inf"),
    (lambda p: rewrite(p, meta={"format": "other/9"}), "unsupported task vector format"),
    (lambda p: rewrite(p, meta={"num_examples": "-3"}),
     "num_examples must be an integer in [1, 1000000000000], got '-3'"),
])
def test_bad_task_vector(cli, ws, change, needle):
    path = ws / f"rounds/0000/deltas/{B}.safetensors"
    change(path)
    expect_error(cli, ws, needle, code=75 if needle == "truncated" else 2)  # an upload in progress: retry
    assert str(path) in " ".join(cli("aggregate", "-r", 0, "-w", ws).output.split()) or needle == "tensors differ"


def test_unsafe_client_file_names(cli, ws):
    d = ws / "rounds/0000/deltas"
    (d / f"{B}.safetensors").rename(d / "b;rm -rf.safetensors")
    expect_error(cli, ws, "invalid client name")


def test_empty_and_single_client_inputs(cli, ws):
    d = ws / "rounds/0000/deltas"
    for c in (B, C):
        (d / f"{c}.safetensors").unlink()
    expect_error(cli, ws, "holds 1 task vector(s); waiting for at least 2", code=75)  # not ready yet, not broken
    (d / f"{A}.safetensors").unlink()
    expect_error(cli, ws, "holds 0 task vector(s)", "similarity", code=75)


def test_all_zero_task_vector_is_reported_and_keeps_its_own_adapter(cli, ws):
    path = ws / f"rounds/0000/deltas/{B}.safetensors"
    arrays, md = safetensors_io.load(path)
    safetensors_io.save(path, {k: np.zeros_like(v) for k, v in arrays.items()}, md)
    r = cli("similarity", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["zero_clients"] == [B]
    r = cli("aggregate", "-r", 0, "-w", ws, "--json")
    w = np.array(json.loads(r.stdout)["weights"])
    np.testing.assert_allclose(w[1], [0, 1, 0])
    assert w[0, 1] == 0 and w[2, 1] == 0
