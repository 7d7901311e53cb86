"""examples/three-sites: the coordinator's cron job and the three-site script under `set -euo pipefail`,
in every state of a round (idle, waiting, partial, complete, after completion), with nothing rewritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbip_cli.testing.synthetic import Shape, make_round, write_workspace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/three-sites"
FEDBIP = f"{sys.executable} -m fedbip_cli"


def files(ws: Path) -> dict[Path, int]:
    """Every file and its mtime, but the digest cache (.fedbip/): a rewrite shows as a changed mtime."""
    return {p: p.stat().st_mtime_ns for p in ws.rglob("*") if p.is_file() and ".fedbip" not in p.relative_to(ws).parts}


def cron(ws: Path, min_clients: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, FEDBIP=FEDBIP, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(["bash", str(EXAMPLE / "coordinator-cron.sh"), str(ws), str(min_clients)],
                          capture_output=True, text=True, env=env, timeout=600)


def unchanged(ws: Path, min_clients: int = 2) -> None:
    before = files(ws)
    r = cron(ws, min_clients)
    assert r.returncode == 0, r.stderr
    assert files(ws) == before


def test_coordinator_cron_in_every_state(tmp_path):
    ws = tmp_path / "ws"
    write_workspace(ws, ["c000", "c001", "c002"])
    unchanged(ws)                                               # idle: no round yet
    make_round(ws, 3, Shape(layers=2, hidden=16, r=2, head=None), keep_trained=False)
    deltas = ws / "rounds/0000/deltas"
    away = tmp_path / "away"
    away.mkdir()
    for c in ("c001", "c002"):
        os.replace(deltas / f"{c}.safetensors", away / f"{c}.safetensors")
    unchanged(ws)                                               # waiting: 1 of 2
    (deltas / "c001.safetensors").write_bytes((away / "c001.safetensors").read_bytes()[:200])
    unchanged(ws)                                               # an upload in progress: still waiting
    os.replace(away / "c001.safetensors", deltas / "c001.safetensors")
    r = cron(ws)                                                # partial but enough: aggregates
    assert r.returncode == 0, r.stderr
    assert (ws / "rounds/0001/start/c000/adapter_model.safetensors").is_file()
    assert (ws / "logs/aggregate-0000.json").is_file() and not list((ws / "rounds").rglob("*.json.tmp"))
    unchanged(ws)                                               # after completion
    os.replace(away / "c002.safetensors", deltas / "c002.safetensors")
    unchanged(ws)                                               # a straggler: counts from round 1 on


def test_coordinator_cron_passes_bad_input_on(tmp_path):
    ws = tmp_path / "ws"
    make_round(ws, 2, Shape(layers=2, hidden=16, r=2, head=None), keep_trained=False)
    assert cron(ws).returncode == 0
    nxt = ws / "rounds/0001/deltas"
    nxt.mkdir()
    for c in ("c000", "c001"):  # round-0 vectors dropped into round 1 by mistake
        (nxt / f"{c}.safetensors").write_bytes((ws / f"rounds/0000/deltas/{c}.safetensors").read_bytes())
    r = cron(ws)
    assert r.returncode == 2 and "metadata says client 'c000' round 0" in " ".join(r.stderr.split())
    assert not (ws / "rounds/0002").exists()


@pytest.mark.slow
def test_three_sites_script_resumes_and_reruns_without_rewriting(tmp_path, tiny_bert):
    env = dict(os.environ, FEDBIP=FEDBIP, PYTHON=sys.executable, PYTHONPATH=str(ROOT), COLUMNS="200",
               SET=f"--set model.path={tiny_bert} --set model.pooling=mean")
    work = tmp_path / "work"

    def run(rounds: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(EXAMPLE / "run.sh"), str(work)], capture_output=True, text=True,
                              env=dict(env, ROUNDS=str(rounds)), timeout=1800)

    first = run(1)                                               # stopped after round 0
    assert first.returncode == 0, first.stderr[-2000:]
    assert (work / "site_a/rounds/0001/start/site_a").is_dir() and not (work / "coordinator/rounds/0002").exists()
    second = run(2)                                              # carries on with round 1
    assert second.returncode == 0, second.stderr[-2000:]
    assert (work / "coordinator/rounds/0002/start/site_c").is_dir()
    before = files(work)
    third = run(2)                                               # after completion: nothing rewritten
    assert third.returncode == 0, third.stderr[-2000:]
    assert files(work) == before
    for s in ("site_a", "site_b", "site_c"):
        assert (work / s / "metrics.jsonl").read_text().count("\n") == 2  # one evaluation per round
