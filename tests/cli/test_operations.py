"""Running a federation unattended: exit codes, file modes, lock files, and the usages as specified."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedbip_cli.testing.synthetic import Shape, make_round

SMALL = Shape(layers=2, hidden=16, r=2, head=None)


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_honour_the_umask_and_no_lock_file_remains(cli, tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    ws = tmp_path / "ws"
    make_round(ws, 3, SMALL, keep_trained=False)
    assert cli("similarity", "-r", 0, "-w", ws).exit_code == 0
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    rounds = ws / "rounds"
    for p in rounds.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (dir_mode if p.is_dir() else file_mode), (p, oct(mode))
    assert [p for p in rounds.rglob(".*")] == []  # no lock files, no temporaries: only federation files


def test_aggregate_inputs_deltas_as_written(cli, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    make_round(ws, 3, SMALL, keep_trained=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `deltas/` names the round's folder, not one under the current folder
    r = cli("aggregate", "--round", 0, "--inputs", "deltas/", "-w", ws)
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(ws)  # and the usage exactly as written, from inside the workspace
    r = cli("aggregate", "--round", 0, "--inputs", "deltas/", "--json")
    assert r.exit_code == 0, r.output
    r = cli("aggregate", "--round", 0, "--inputs", "nowhere/")
    assert r.exit_code == 2 and "--inputs nowhere: folder not found" in " ".join(r.output.split())


def test_not_ready_yet_is_75(cli, tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 3, SMALL, keep_trained=False)
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    r = cli("aggregate", "-r", 1, "-w", ws)  # round 1 is open but nothing has arrived
    assert r.exit_code == 75 and "no task vector has arrived for round 1 yet" in " ".join(r.output.split())
    (ws / "rounds/0002/deltas").mkdir(parents=True)
    r = cli("similarity", "-r", 2, "-w", ws)
    assert r.exit_code == 75, r.output


def test_site_round_is_inferred_and_early_requests_wait(cli, make_workspace):
    # Prepare
    ws = make_workspace({"a": ["sport"], "b": ["money"]}, n_train=6)
    # Execute: `fedbip finetune --client a` with no --round, as the usage is written
    for c in "ab":
        r = cli("finetune", "--client", c, "-w", ws)
        assert r.exit_code == 0, r.output
        assert cli("taskvec", "-c", c, "-w", ws).exit_code == 0
    early = cli("finetune", "-c", "a", "-r", 1, "-w", ws)
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    again = cli("finetune", "--client", "a", "-w", ws)
    # Assert
    assert (ws / "rounds/0000/trained/a").is_dir() and (ws / "rounds/0000/deltas/b.safetensors").is_file()
    assert early.exit_code == 75  # the coordinator has not aggregated round 0 yet: wait, not broken
    text = " ".join(early.output.split())
    assert "has not sent 'a' its adapter for round 1" in text and "fedbip status" in text
    assert "fedbip aggregate" not in text  # a site is pointed to site actions
    assert again.exit_code == 0 and (ws / "rounds/0001/trained/a").is_dir()  # the site's current round is 1


def test_exit_codes_and_completion_are_in_help(cli):
    for args in (("aggregate", "--help"), ("finetune", "--help"), ("--help",)):
        text = " ".join(cli(*args).output.split())
        assert "75 not ready yet" in text and "3 round conflict" in text and "2 bad input" in text, args
    assert "--install-completion" in cli("--help").output


def test_quiet_after_the_command(tmp_path):
    import subprocess
    import sys

    ws = tmp_path / "ws"
    make_round(ws, 2, SMALL, keep_trained=False)
    code = "import sys; from fedbip_cli.cli.app import main; sys.argv[0] = 'fedbip'; main()"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), COLUMNS="200")
    loud = subprocess.run([sys.executable, "-c", code, "aggregate", "-r", "0", "-w", str(ws)], capture_output=True,
                          text=True, env=env)
    quiet = subprocess.run([sys.executable, "-c", code, "aggregate", "-r", "0", "-w", str(ws), "--quiet"],
                           capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and "wrote 2 personalized adapters" in loud.stderr and loud.stdout  # table on stdout
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
