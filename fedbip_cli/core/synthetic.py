"""Synthetic rounds for tests and benchmarks: a coordinator workspace with a start adapter and K task
vectors shaped like a real LoRA adapter, written through the same writers the pipeline uses."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import stfile
from .adapter import read_adapter, save_adapter
from .hashing import sha256_file
from .taskvec import TaskVectorMeta

FINGERPRINT = "synthetic-base-model"


def lora_layout(modules: Sequence[str], r: int, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a PEFT LoRA adapter on `modules`."""
    layout = {}
    for m in modules:
        layout[f"base_model.model.{m}.lora_A.weight"] = (r, d_in)
        layout[f"base_model.model.{m}.lora_B.weight"] = (d_out, r)
    return layout


def adapter_config(modules: Sequence[str], r: int, alpha: float) -> dict:
    return {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": False, "bias": "none",
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}), "modules_to_save": None,
            "rank_pattern": {}, "alpha_pattern": {}, "task_type": None, "base_model_name_or_path": None}


def make_round(root: Path, clients: Sequence[str], layout: dict[str, tuple[int, ...]], config: dict, *,
               seed: int = 0, dtype: str = "F32", num_examples: int = 100, groups: int = 2) -> Path:
    """Write root/fedbip.yaml, root/initial/ and root/rounds/0000/deltas/<client>.safetensors.

    Clients are split into `groups`; a client's task vector is its group's direction plus noise, so
    similarity has structure to find. Returns the deltas folder.
    """
    from ..template import render

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "fedbip.yaml").write_text(render(clients={c: {"train": f"data/{c}.jsonl"} for c in clients}))
    start = {n: (rng.standard_normal(s) * 0.02).astype(np.float32) if "lora_A" in n else np.zeros(s, np.float32)
             for n, s in layout.items()}
    save_adapter(root / "initial", config, start, {n: dtype for n in layout})
    start_sha = sha256_file(root / "initial" / "adapter_model.safetensors")
    signature = read_adapter(root / "initial").lora_signature()
    deltas = root / "rounds" / "0000" / "deltas"
    deltas.mkdir(parents=True, exist_ok=True)
    group_seed = [int(s) for s in rng.integers(0, 2**31, size=groups)]
    for k, client in enumerate(clients):
        g = np.random.default_rng(group_seed[k % groups])
        own = np.random.default_rng(seed * 1000 + k + 1)
        meta = TaskVectorMeta(client, 0, "factor", FINGERPRINT, start_sha, num_examples + k, signature)
        with stfile.StreamWriter(deltas / f"{client}.safetensors", {n: ("F32", s) for n, s in layout.items()},
                                 meta.to_strings()) as w:
            for name, shape in layout.items():
                w.write(name, (g.standard_normal(shape) + 0.5 * own.standard_normal(shape)).astype(np.float32) * 1e-3)
    return deltas
