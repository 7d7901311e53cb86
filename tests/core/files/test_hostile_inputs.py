"""Hostile inputs at the coordinator (issue 15): unlisted clients, replays, inflated num_examples,
malformed metadata, special files, links out of the workspace, tampered start configs, broken manifests.
Each: exit code 2, one line naming the file or key, nothing written (or, for a cap, reported)."""

from __future__ import annotations

import json
import os
import re
import shutil
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


def files_of(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")}


def expect_error(cli, ws: Path, needle: str, *command: str) -> str:
    before = files_of(ws)
    r = cli(*(command or ("aggregate",)), "-r", 0, "-w", ws)
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert needle in text, r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1, r.output
    if command[:1] != ("verify",):  # verify prints its report, then the one error line
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert files_of(ws) == before
    return text


def rewrite_meta(path: Path, **meta: str) -> None:
    arrays, md = safetensors_io.load(path)
    safetensors_io.save(path, arrays, md | meta)


def test_unlisted_client_is_refused(cli, ws):
    d = ws / "rounds/0000/deltas"
    shutil.copy(d / f"{B}.safetensors", d / "intruder.safetensors")
    rewrite_meta(d / "intruder.safetensors", client="intruder")
    expect_error(cli, ws, "client 'intruder' is not listed in fedbip.yaml", "similarity")
    expect_error(cli, ws, "client 'intruder' is not listed in fedbip.yaml")


def test_replayed_vector_under_another_name_is_refused(cli, ws):
    d = ws / "rounds/0000/deltas"
    shutil.copy(d / f"{A}.safetensors", d / f"{C}.safetensors")  # round 0: every client shares the start
    rewrite_meta(d / f"{C}.safetensors", client=C)
    expect_error(cli, ws, "holds the same task vector as", "similarity")
    expect_error(cli, ws, "a replayed vector is refused")


@pytest.mark.parametrize("key, value, needle", [
    ("num_examples", "1" + "0" * 30, "num_examples must be an integer in [1, 1000000000000]"),
    ("num_examples", " 7", "num_examples must be an integer"),
    ("round", "99999999999999999999", "round must be an integer"),
    ("lora_config", "null", "metadata lora_config: LoRA config must be a JSON object"),
    ("lora_config", "[" * 30000 + "]" * 30000, "lora_config is not valid JSON"),
    ("lora_config", json.dumps({"r": 4, "lora_alpha": 1e999}), "lora_alpha must be a finite number > 0"),
    ("lora_config", json.dumps({"r": {"a": {"b": [1]}}}), "r must be an integer in [1, 65536]"),
    ("lora_config", json.dumps({"r": 4, "rank_pattern": {"(": 2}}), "rank_pattern must be a map"),
    ("start_sha256", "zz", "start_sha256 is not a sha256"),
    ("base_fingerprint", "x\ny", "base_fingerprint must be"),
])
def test_malformed_metadata_is_one_line(cli, ws, key, value, needle):
    path = ws / f"rounds/0000/deltas/{B}.safetensors"
    rewrite_meta(path, **{key: value})
    text = expect_error(cli, ws, needle)
    assert str(path) in text


def test_num_examples_capped_at_what_the_site_declared(cli, ws):
    cfg = ws / "fedbip.yaml"
    cfg.write_text(cfg.read_text().replace("c001:\n    train: data/c001/train.jsonl",
                                           "c001:\n    train: data/c001/train.jsonl\n    max_examples: 50"))
    rewrite_meta(ws / f"rounds/0000/deltas/{B}.safetensors", num_examples=str(10 ** 12))
    r = cli("aggregate", "-r", 0, "-w", ws, "--strategy", "fedavg")
    assert r.exit_code == 0, r.output
    doc = json.loads((ws / "rounds/0000/weights.json").read_text())
    assert doc["capped_examples"] == {B: {"sent": 10 ** 12, "used": 50}}
    assert doc["num_examples"][1] == 50
    np.testing.assert_allclose(np.array(doc["weights"])[0], np.array(doc["num_examples"]) / sum(doc["num_examples"]))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_deltas_is_refused_without_blocking(cli, ws):
    path = ws / f"rounds/0000/deltas/{B}.safetensors"
    path.unlink()
    os.mkfifo(path)
    expect_error(cli, ws, "not a regular file (a FIFO, socket or device)")


def test_symlink_out_of_the_workspace_is_refused(cli, ws, tmp_path):
    path = ws / f"rounds/0000/deltas/{B}.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(path, outside)
    path.symlink_to(outside)
    expect_error(cli, ws, "task vector link leads outside the workspace")


def test_start_adapter_config_is_provenance(cli, ws):
    """A start adapter's adapter_config.json changed after the task vectors were made (lora_alpha x100)
    is refused, and verify names it once the round is recorded."""
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    start = next((ws / "rounds/0000/start").iterdir()) if (ws / "rounds/0000/start").is_dir() else ws / "initial"
    cfg_path = start / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    manifest = json.loads((ws / "rounds/0000/manifest.json").read_text())["steps"]["aggregate"]["inputs"]
    assert any(k.endswith("adapter_config.json") for k in manifest)
    cfg_path.write_text(json.dumps(cfg | {"lora_alpha": cfg.get("lora_alpha", 8) * 100}))
    expect_error(cli, ws, "LoRA settings differ from those the task vector", "aggregate", "--force")
    expect_error(cli, ws, "adapter_config.json changed since it was recorded", "verify")


@pytest.mark.parametrize("doc, needle", [
    ("[1, 2]", "corrupted manifest (not a JSON object)"),
    ('{"steps": [1]}', "'steps' must map step names to objects"),
    ('{"steps": {"x": {"inputs": {"../../etc/passwd": "' + "0" * 64 + '"}}}}', "is not a plain file path"),
    ('{"steps": {"x": {"inputs": {"a": 5}}}}', "has no sha256"),
    ('{"steps": {"x": {"outputs": []}}}', "must map file paths to sha256 digests"),
    ("{" * 100000, "corrupted manifest (not JSON)"),
])
def test_verify_never_a_traceback(cli, ws, doc, needle):
    (ws / "rounds/0000/manifest.json").write_text(doc)
    expect_error(cli, ws, needle, "verify")


def test_failed_similarity_leaves_no_outputs(cli, ws, monkeypatch):
    """A failure after the first output was written (here: the plot) removes what this run wrote."""
    import fedbip_cli.plots as plots

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "similarity_heatmap", broken)
    before = files_of(ws)
    r = cli("similarity", "-r", 0, "-w", ws)
    assert r.exit_code == 2 and "no space left" in r.output
    assert files_of(ws) == before


def test_brackets_and_line_breaks_in_messages_are_text(cli, ws):
    """Text from a file (a YAML key, a manifest's step name) is never read as console markup."""
    manifest_path = ws / "rounds/0000/manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"steps": {}}
    manifest["steps"]["[/x]\nstep"] = {"inputs": {"nothing/here": "0" * 64}}
    (ws / "rounds/0000/manifest.json").write_text(json.dumps(manifest))
    text = expect_error(cli, ws, "[/x]\\nstep: nothing/here is missing", "verify")
    assert "Traceback" not in text
    cfg = ws / "fedbip.yaml"
    cfg.write_text(re.sub(r"^training:.*\n", lambda m: 'training:\n  "[/x]\\n": 1\n', cfg.read_text(), count=1,
                          flags=re.M))
    expect_error(cli, ws, "unknown key 'training.[/x]", "similarity")
