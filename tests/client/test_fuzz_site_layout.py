"""Fuzzing the workspace layout at a site (issue 22): every path a site's commands read or write replaced by
something it should not be (random bytes, bytes that are not UTF-8, a folder, a FIFO, a symlink to a file
or folder outside the workspace), then `finetune`, `taskvec`, `eval` or `labels` run on it.

The rule is tests/hostile_paths.py's (the coordinator's side: tests/core/files/test_fuzz_layout.py): exit 0,
or one line with exit 2 (75, 3) and not a byte changed; a wrong kind of thing where the command writes is
always exit 2, refused before the work; nothing outside the workspace is ever changed or created.
The pristine workspace is a tiny random BERT after round 0 was aggregated and site `a` trained round 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedbip_cli.cli.app import app
from fuzzing import fuzz
from hostile_paths import KINDS, plant, reset, snapshot
from hostile_paths import check as check_rule

RUNNER = CliRunner()
R1 = Path("rounds/0001")
TRAINED, START = R1 / "trained/a", R1 / "start/a"
FILES = [Path("fedbip.yaml"), Path("labels.json"), Path("metrics.jsonl"), Path("data/a/train.jsonl"),
         Path("data/a/test.jsonl"), START / "adapter_config.json", START / "adapter_model.safetensors",
         TRAINED / "adapter_config.json", TRAINED / "adapter_model.safetensors", TRAINED / "fedbip_training.json",
         R1 / "deltas/a.safetensors", R1 / "manifest.json"]
FOLDERS = [TRAINED, START, R1 / "deltas", R1]
COMMANDS = {  # arguments, and the paths the command writes
    "finetune": (["finetune", "-c", "a", "-r", 1, "--force"], {TRAINED, R1 / "manifest.json", R1}),
    "taskvec": (["taskvec", "-c", "a", "-r", 1, "--force"], {R1 / "deltas/a.safetensors", R1 / "manifest.json"}),
    "eval": (["eval", "-c", "a", "-r", 1], {Path("metrics.jsonl")}),
    "labels": (["labels"], {Path("labels.json")}),
}


def _invoke(*args: object):
    return RUNNER.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def layout(tmp_path_factory, build_workspace):
    base = tmp_path_factory.mktemp("site-layout")
    pristine = build_workspace(base / "pristine", {"a": ["sport", "money"], "b": ["sport", "tech"]}, n_train=8,
                               n_test=4)
    steps = [("initial",), *(("finetune", "-c", c, "-r", 0) for c in "ab"),
             *(("taskvec", "-c", c, "-r", 0) for c in "ab"), ("aggregate", "-r", 0),
             ("finetune", "-c", "a", "-r", 1), ("eval", "-c", "a", "-r", 1)]
    for args in steps:
        r = _invoke(*args, "-w", pristine)
        assert r.exit_code == 0, (args, r.output)
    return pristine, base / "ws", base / "outside"


@fuzz(24)
@given(st.sampled_from(FILES + FOLDERS), st.sampled_from(KINDS), st.sampled_from(sorted(COMMANDS)),
       st.binary(max_size=32))
def test_hostile_site_path(layout, rel, kind, command, data):
    pristine, root, outside = layout
    reset(pristine, root, outside)
    plant(root / rel, kind, data, outside)
    before, outside_before = snapshot(root), snapshot(outside)
    args, writes = COMMANDS[command]
    result = _invoke(*args, "-w", root)
    check_rule(result, root=root, outside=outside, writes=rel in writes, kind=kind, before=before,
               outside_before=outside_before, what=(command, rel, kind), folder=rel in FOLDERS)


@pytest.mark.parametrize("kind", ["folder", "fifo", "link-out"])
def test_eval_refuses_a_bad_metrics_log_before_the_work(layout, kind):
    # Prepare: the cases: metrics.jsonl a folder (was a traceback after all the work), a link out
    # (was appended to, outside the workspace)
    pristine, root, outside = layout
    reset(pristine, root, outside)
    plant(root / "metrics.jsonl", kind, b"", outside)
    before, outside_before = snapshot(root), snapshot(outside)
    # Execute
    result = _invoke("eval", "-c", "a", "-r", 1, "-w", root)
    # Assert
    assert result.exit_code == 2, result.output
    assert "metrics.jsonl" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(root) == before and snapshot(outside) == outside_before


def test_training_info_that_is_not_utf8_is_one_line(layout):
    pristine, root, outside = layout
    reset(pristine, root, outside)
    plant(root / TRAINED / "fedbip_training.json", "not-utf8", b"x", outside)
    result = _invoke("taskvec", "-c", "a", "-r", 1, "-w", root)
    assert result.exit_code == 2, result.output
    assert "fedbip_training.json" in result.stderr and "UTF-8" in result.stderr, result.stderr


def test_a_labels_file_listing_a_label_twice_is_left_as_it_is(layout):
    pristine, root, outside = layout
    reset(pristine, root, outside)
    (root / "labels.json").write_text('["money", "money", "sport", "tech"]\n')
    before = (root / "labels.json").read_bytes()
    result = _invoke("labels", "-w", root)
    assert result.exit_code == 2, result.output
    assert (root / "labels.json").read_bytes() == before
