"""Flower's deployment runtime for real: examples/flower/deploy.sh starts a SuperLink and three SuperNodes
as separate processes on localhost (insecure, then TLS with certificates made for the run), and `flwr run`s
examples/flower against them for two rounds; the rounds leave the file pipeline's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedbip_cli.core.files.manifest import verify_round  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SITES = {"site_a": ["sport", "money"], "site_b": ["sport", "money"], "site_c": ["tech", "money"]}
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "flower-superlink").exists() or not shutil.which("openssl"),
                    reason="needs flwr's executables beside this Python, and openssl")
@pytest.mark.parametrize("mode", ["insecure", "tls"])
def test_superlink_and_three_supernodes_run_two_rounds(tmp_path, build_workspace, mode):
    # Prepare: three site workspaces and a coordinator on the tiny BERT
    work = tmp_path / "work"
    for folder in [*SITES, "coordinator"]:
        build_workspace(work / folder, SITES)
    env = dict(os.environ, PYTHON=sys.executable, FLWR_BIN=str(BIN), PATH=f"{BIN}:{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", ROUNDS="2", SITES=" ".join(SITES))
    # Execute
    r = subprocess.run(["bash", str(ROOT / "examples/flower/deploy.sh"), str(work), mode], env=env,
                       capture_output=True, text=True, timeout=1800)
    # Assert
    assert r.returncode == 0, r.stderr[-3000:]
    assert "flwr run: 2 rounds" in r.stdout and f"({mode})" in r.stdout
    coord = work / "coordinator"
    for t in (0, 1):  # the file pipeline's files, intact by sha256
        assert not any(verify_round(coord / "rounds" / f"{t:04d}").values())
        manifest = json.loads((coord / "rounds" / f"{t:04d}" / "manifest.json").read_text())
        assert {"aggregate", "similarity", "flower"} <= set(manifest["steps"])
        for s in SITES:  # each task vector and adapter is the same file on both sides
            R, N = f"{t:04d}", f"{t + 1:04d}"
            assert (coord / f"rounds/{R}/deltas/{s}.safetensors").read_bytes() == \
                (work / s / f"rounds/{R}/deltas/{s}.safetensors").read_bytes()
            assert (coord / f"rounds/{N}/start/{s}/adapter_model.safetensors").read_bytes() == \
                (work / s / f"rounds/{N}/start/{s}/adapter_model.safetensors").read_bytes()
    for s in SITES:
        rounds = [json.loads(x)["round"] for x in (work / s / "metrics.jsonl").read_text().splitlines()]
        assert rounds == [1, 2]
    config = (work / "flwr-home/config.toml").read_text()
    link_log = (work / "logs/superlink.log").read_text()
    if mode == "tls":
        assert "root-certificates" in config and "insecure" not in config
        assert "running on https://127.0.0.1" in link_log
    else:
        assert "insecure = true" in config and "running on http://127.0.0.1" in link_log
