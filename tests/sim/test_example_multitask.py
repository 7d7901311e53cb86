"""examples/multitask runs end to end (data, tiny Llama, one round over eight instruction tasks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multitask"


def test_multitask_example_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parent.parent)}
    work = tmp_path / "mt"
    for cmd in ([str(EXAMPLE / "make_data.py"), str(work), "--train", "6", "--test", "2"],
                [str(EXAMPLE / "make_model.py"), str(work / "model")],
                [str(EXAMPLE / "run.py"), str(work), "--rounds", "1"]):
        done = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1 mean: exact match" in done.stdout
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 8 and all("token_f1" in m for m in metrics)
    weights = json.loads((work / "rounds/0000/weights.json").read_text())
    assert weights["ranks"]["translate"] == 8 and weights["ranks"]["copy"] == 4 and weights["common_rank"] == 8
