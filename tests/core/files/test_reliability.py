"""Crash safety, idempotency, locking and verification of the coordinator's files (synthetic rounds)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedbip_cli.core.files.adapter import check_adapter
from fedbip_cli.core.files.locks import step_lock
from fedbip_cli.core.files.manifest import verify_round
from fedbip_cli.errors import UserError
from fedbip_cli.testing.synthetic import Shape, make_round

ROOT = Path(__file__).resolve().parents[3]
def synthetic_ws(root: Path, d: int = 64, layers: int = 4) -> Path:
    make_round(root, 6, Shape(layers=layers, hidden=d, r=4, head=None), keep_trained=False)
    return root


def fedbip(*args: object, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "fedbip_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def test_rerun_is_verified_noop_and_force_redoes(tmp_path):
    ws = synthetic_ws(tmp_path / "ws")
    first = fedbip("aggregate", "-r", 0, "-w", ws, "--json")
    assert first.returncode == 0, first.stderr
    out = ws / "rounds/0001/start/c000/adapter_model.safetensors"
    stamp = out.stat().st_mtime_ns
    again = fedbip("aggregate", "-r", 0, "-w", ws, "--json")
    assert json.loads(again.stdout)["skipped"] is True and out.stat().st_mtime_ns == stamp
    forced = fedbip("aggregate", "-r", 0, "-w", ws, "--json", "--force")
    assert json.loads(forced.stdout)["skipped"] is False and out.stat().st_mtime_ns != stamp
    assert out.read_bytes() == out.read_bytes()


def test_verify_detects_tampering(tmp_path):
    ws = synthetic_ws(tmp_path / "ws")
    assert fedbip("aggregate", "-r", 0, "-w", ws).returncode == 0
    assert fedbip("verify", "-r", 0, "-w", ws).returncode == 0
    target = ws / "rounds/0001/start/c003/adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    r = fedbip("verify", "-r", 0, "-w", ws)
    assert r.returncode == 2 and "rounds/0001/start/c003/adapter_model.safetensors changed" in r.stderr
    # a changed output also makes the next aggregate redo the work instead of skipping
    again = fedbip("aggregate", "-r", 0, "-w", ws, "--json")
    assert json.loads(again.stdout)["skipped"] is False
    assert fedbip("verify", "-r", 0, "-w", ws).returncode == 0


def test_concurrent_run_fails_at_once_and_stale_lock_is_recovered(tmp_path):
    folder = tmp_path / "round"
    with step_lock(folder, "aggregate"):
        with pytest.raises(UserError, match="already running"):
            with step_lock(folder, "aggregate"):
                pass
    # a process killed while holding the lock leaves the file behind, but not the lock
    code = f"from fedbip_cli.core.files.locks import step_lock\nfrom pathlib import Path\nimport os\n" \
           f"with step_lock(Path({str(folder)!r}), 'aggregate'):\n    os.kill(os.getpid(), 9)\n"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (folder / ".aggregate.lock").read_text().startswith("pid ")
    with step_lock(folder, "aggregate") as note:
        assert note and "stale lock" in note


def check_outputs_whole(ws: Path) -> None:
    """Each output folder is absent or complete: both files, a valid header, all tensors readable."""
    nxt = ws / "rounds/0001"
    for folder in [*(nxt / "start").glob("*"), nxt / "global"] if nxt.exists() else []:
        if not folder.name.startswith("."):  # temporary folders are never at an output name
            check_adapter(folder)
    manifest = ws / "rounds/0000/manifest.json"
    if manifest.exists():
        json.loads(manifest.read_text())
        if "aggregate" in json.loads(manifest.read_text()).get("steps", {}):
            assert not any(verify_round(ws / "rounds/0000").values())


def test_sigkill_during_aggregate_never_leaves_half_a_file(tmp_path):
    ws = synthetic_ws(tmp_path / "ws", d=512, layers=8)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    assert fedbip("aggregate", "-r", 0, "-w", ws, "--force").returncode == 0
    full = time.perf_counter() - t0
    reference = {p.relative_to(ws): p.read_bytes() for p in (ws / "rounds/0001").rglob("*.safetensors")}
    rng = random.Random(0)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "fedbip_cli", "aggregate", "-r", "0", "-w", str(ws), "--force"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_outputs_whole(ws)
    r = fedbip("aggregate", "-r", 0, "-w", ws)
    assert r.returncode == 0, r.stderr
    assert not any(verify_round(ws / "rounds/0000").values())
    for rel, data in reference.items():
        assert (ws / rel).read_bytes() == data
    leftovers = list((ws / "rounds").rglob(".*"))
    assert leftovers == []  # the rerun swept what the killed writers left, and removed its lock files


def test_second_concurrent_aggregate_fails_at_once(tmp_path):
    ws = synthetic_ws(tmp_path / "ws")
    with step_lock(ws / "rounds/0000", "aggregate"):  # as if another process were aggregating
        r = fedbip("aggregate", "-r", 0, "-w", ws, timeout=300)  # waiting on the lock would never end
        assert r.returncode == 75 and "already running for this round" in r.stderr
    assert not (ws / "rounds/0001").exists()
