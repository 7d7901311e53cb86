"""User errors: exit code 2 (75 for "not ready yet"), one line naming the file/key/value, no traceback,
nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedbip_cli.testing.synthetic import Shape, make_round


def snapshot(root):
    """Every file and its mtime (lock files included: a step removes its own when it ends)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def round0(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"], "c": ["tech"]}, n_train=6)
    for c in "abc":
        assert cli("finetune", "-c", c, "-r", 0, "-w", ws).exit_code == 0
        assert cli("taskvec", "-c", c, "-r", 0, "-w", ws).exit_code == 0
    return ws


def one_line_error(result, *needles, code=2):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert "Traceback" not in result.output
    for n in needles:
        assert n in text, (n, result.output)


def test_unknown_client_and_missing_workspace(cli, round0, tmp_path):
    one_line_error(cli("finetune", "-c", "zed", "-r", 0, "-w", round0), "unknown client 'zed'")
    one_line_error(cli("finetune", "-c", "../x", "-r", 0, "-w", round0), "invalid client name")
    one_line_error(cli("aggregate", "-r", 0, "-w", tmp_path / "nowhere"), "not a fedbip workspace")


def test_incomplete_task_vector_is_not_ready_and_changes_nothing(cli, round0):
    tv = round0 / "rounds/0000/deltas/b.safetensors"
    tv.write_bytes(tv.read_bytes()[:100])  # as an upload in progress leaves it
    before = snapshot(round0)
    one_line_error(cli("aggregate", "-r", 0, "-w", round0), str(tv), "incomplete", code=75)
    assert snapshot(round0) == before
    assert not (round0 / "rounds/0001").exists()


def test_misplaced_task_vector_metadata(cli, round0):
    d = round0 / "rounds/0000/deltas"
    os.replace(d / "b.safetensors", d / "c.safetensors")  # b's vector sent as c's
    one_line_error(cli("similarity", "-r", 0, "-w", round0), "metadata says client 'b'")
    os.replace(d / "c.safetensors", d / "x.safetensors")  # under a name fedbip.yaml does not list
    one_line_error(cli("similarity", "-r", 0, "-w", round0), "client 'x' is not listed")


def test_too_few_inputs_and_bad_override(cli, round0):
    d = round0 / "rounds/0000/deltas"
    for c in "bc":
        (d / f"{c}.safetensors").unlink()
    one_line_error(cli("aggregate", "-r", 0, "-w", round0), "waiting for at least 2", code=75)
    one_line_error(cli("aggregate", "-r", 0, "-w", round0, "--set", "training.nope=1"), "unknown key")


def test_bad_data_line_is_named(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    with open(ws / "data/a/train.jsonl", "a") as f:
        f.write("{not json\n")
    one_line_error(cli("finetune", "-c", "a", "-r", 0, "-w", ws), "train.jsonl:13", "malformed JSON")


def test_label_outside_map(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    with open(ws / "data/a/train.jsonl", "a") as f:
        f.write('{"text": "match goal", "label": "weather"}\n')
    one_line_error(cli("finetune", "-c", "a", "-r", 0, "-w", ws), "label 'weather' is not in the label map")


def test_model_path_missing(cli, make_workspace, tmp_path):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    one_line_error(cli("finetune", "-c", "a", "-r", 0, "-w", ws, "--set", f"model.path={tmp_path}/none"),
                   "model.path", "not a model folder")


def test_real_process_exit_code_and_single_line(tmp_path):
    env = dict(os.environ, COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "fedbip_cli", "aggregate", "-r", "0", "-w", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "not a fedbip workspace" in r.stderr


def test_empty_data_set(cli, make_workspace):
    ws = make_workspace({"a": ["sport"], "b": ["money"]})
    (ws / "data/a/train.jsonl").write_text("\n")
    one_line_error(cli("finetune", "-c", "a", "-r", 0, "-w", ws), "train.jsonl: data file holds no examples")


def test_unknown_space_is_one_clear_error(tmp_path, cli):
    make_round(tmp_path, 2, Shape())
    r = cli("similarity", "-r", 0, "-w", tmp_path, "--space", "dense")
    assert r.exit_code == 2 and "unknown space 'dense'" in r.output
    r = cli("aggregate", "-r", 0, "-w", tmp_path, "--set", "aggregation.space=dense")
    assert r.exit_code == 2 and "aggregation.space" in r.output
