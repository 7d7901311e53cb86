"""benchmarks/gpu.py, the script a session lent a GPU runs in one call: its CPU smoke mode (tiny random
Llamas, two steps each side) must run through every part and write its JSON, so the GPU call does not
find a broken script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_mode_writes_every_part(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--smoke", "--out", str(out), "--workdir", str(tmp_path / "w")])
    # Execute
    gpu.main()
    # Assert: both models compared on both sides, QLoRA skipped with its reason on CPU
    results = json.loads(out.read_text())
    assert results["smoke"] and results["device"] == "cpu"
    for name in ("smollm2", "llama-7b"):
        for side in ("fedbip", "trainer"):
            run = results[name][side]
            assert run["tokens_per_second"] > 0 and 0 <= run["padding_fraction"] < 1, (name, side)
        assert results[name]["ratio_tokens_per_second"] > 0
    assert results["qlora"] == {"skipped": "no CUDA device"}
