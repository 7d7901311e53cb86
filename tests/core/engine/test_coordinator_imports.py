"""The coordinator needs no model and no deep-learning stack: `similarity` and `aggregate` (both spaces)
never import torch, transformers or peft, and `fedbip --help` imports not even numpy. Checked in fresh
interpreters with -X importtime, on a synthetic round."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbip_cli.testing.synthetic import Shape, make_round

REPO = Path(__file__).resolve().parents[3]
HEAVY = {"torch", "transformers", "peft"}


def imported(*args: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "fedbip_cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("space", ["factor", "delta"])
def test_coordinator_commands_import_no_torch_transformers_or_peft(tmp_path, space):
    make_round(tmp_path, 3, Shape(), space=space)
    for command in (["similarity", "-r", "0", "-w", str(tmp_path), "--space", space, "--json"],
                    ["aggregate", "-r", "0", "-w", str(tmp_path), "--space", space, "--json"]):
        mods = imported(*command)
        assert "numpy" in mods  # the check sees real imports
        assert not mods & HEAVY, (command[0], sorted(mods & HEAVY))


def test_help_imports_nothing_heavy():
    """Not rich either (issue 21: typer's rich help formatter was most of a `--help`'s CPU time)."""
    for args in (("--help",), ("finetune", "--help"), ("aggregate", "--help"), ("demo", "--help")):
        mods = imported(*args)
        light = HEAVY | {"numpy", "yaml", "rich", "markdown_it", "pygments"}
        assert not mods & light, (args, sorted(mods & light))


def test_help_shows_defaults_without_markup_escapes():
    """click's plain formatter prints "[default: .]", not typer's rich-escaped "\\[default: .]"."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", COLUMNS="200")
    text = subprocess.run([sys.executable, "-m", "fedbip_cli", "aggregate", "--help"], env=env, capture_output=True,
                          text=True, timeout=120, check=True).stdout
    assert "[default: .]" in text and "\\[" not in text, text
