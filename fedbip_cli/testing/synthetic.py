"""Synthetic federations for the coordinator: PEFT LoRA adapters and task vectors made with numpy.

The coordinator never loads a model (task vectors carry the base model's fingerprint), so its
commands can be tried, tested and benchmarked at any scale without one: `make_round` writes a
workspace whose round 0 holds start adapters, trained adapters and task vectors shaped like a real
model's LoRA (e.g. LLaMA-7B: r=16 on q_proj and v_proj of 32 layers, hidden 4096). Clients come in
groups whose updates share a direction, so similarities have structure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import read_adapter, save_adapter
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.taskvec import TaskVectorMeta, write_taskvec
from fedbip_cli.steps.site import init_workspace
from fedbip_cli.workspace.layout import Workspace

FINGERPRINT = "synthetic-base-model"


@dataclass
class Shape:
    """The LoRA layout of a synthetic adapter."""

    layers: int = 2
    hidden: int = 32
    r: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    head: tuple[int, int] | None = (3, 32)
    """A dense trainable tensor (classification head, saved as modules_to_save), or None."""
    rslora: bool = False

    @classmethod
    def llama7b(cls) -> "Shape":
        """LLaMA-7B LoRA as in FedIT/FedBip: r=16 on q_proj and v_proj of 32 layers, hidden 4096."""
        return cls(layers=32, hidden=4096, r=16, alpha=32.0, head=None)

    def modules(self) -> list[str]:
        return [f"base_model.model.model.layers.{i}.self_attn.{t}" for i in range(self.layers) for t in self.targets]

    def config(self) -> dict:
        return {"peft_type": "LORA", "task_type": None, "r": self.r, "lora_alpha": self.alpha,
                "lora_dropout": 0.0, "target_modules": list(self.targets), "use_rslora": self.rslora,
                "modules_to_save": ["classifier"] if self.head else None, "bias": "none",
                "base_model_name_or_path": FINGERPRINT, "fan_in_fan_out": False, "inference_mode": True}

    @property
    def nbytes_fp32(self) -> int:
        head = int(np.prod(self.head)) if self.head else 0
        return 4 * (len(self.modules()) * 2 * self.r * self.hidden + head)


@dataclass
class Round:
    """What `make_round` wrote."""

    root: Path
    clients: list[str]
    groups: list[int]
    shape: Shape
    files: dict[str, list[Path]] = field(default_factory=dict)


def random_adapter(shape: Shape, rng: np.random.Generator, *, zero_b: bool = True) -> dict[str, np.ndarray]:
    """A start adapter: A ~ N(0, 1/in) as LoRA initialises it, B = 0 (round 0) or small, head small."""
    t: dict[str, np.ndarray] = {}
    for m in shape.modules():
        t[f"{m}.lora_A.weight"] = rng.standard_normal((shape.r, shape.hidden), dtype=np.float32) / np.sqrt(shape.hidden)
        b = np.zeros((shape.hidden, shape.r), np.float32)
        t[f"{m}.lora_B.weight"] = b if zero_b else rng.standard_normal(b.shape, dtype=np.float32) * np.float32(0.01)
    if shape.head:
        t["base_model.model.classifier.modules_to_save.default.weight"] = \
            rng.standard_normal(shape.head, dtype=np.float32) * np.float32(0.05)
    return t


def trained_from(start: dict[str, np.ndarray], direction: dict[str, np.ndarray], rng: np.random.Generator,
                 *, noise: float, freeze_a: bool) -> dict[str, np.ndarray]:
    """start + the group's direction + client noise (A untouched when `freeze_a`)."""
    out = {}
    for name, x in start.items():
        if freeze_a and ".lora_A." in name:
            out[name] = x
            continue
        step = direction[name] + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise)
        out[name] = x + step * np.float32(0.01)
    return out


def write_workspace(root: Path, clients: Sequence[str], space: str = "factor") -> Path:
    """A fedbip.yaml naming the clients (their data files need not exist: the coordinator never reads them)."""

    spec = {c: {"train": f"data/{c}/train.jsonl"} for c in clients}
    path = init_workspace(root, labels=["x", "y", "z"], clients=spec, force=True)
    if space != "factor":
        path.write_text(path.read_text().replace("space: factor ", f"space: {space} "))
    return path


def make_round(root: str | Path, n_clients: int, shape: Shape | None = None, *, groups: int = 2,
               space: str = "factor", dtype: str = "F32", shared_start: bool = True, zero_b: bool = True,
               freeze_a: bool = False, noise: float = 0.5, seed: int = 0, keep_trained: bool = True) -> Round:
    """Write a workspace with round 0's start adapters, trained adapters and task vectors.

    `shared_start`: every client starts from `initial/` (round 0); else each from its own
    rounds/0000/start/<client>. `dtype` (F32, F16, BF16) is the adapters' storage dtype.
    """
    root = Path(root)
    shape = shape or Shape()
    clients = [f"c{k:03d}" for k in range(n_clients)]
    write_workspace(root, clients, space)
    ws = Workspace.open(root)
    rng = np.random.default_rng(seed)
    dtypes: dict[str, str] | None = None if dtype == "F32" else {}
    config = shape.config()
    template = random_adapter(shape, rng, zero_b=zero_b)
    if dtypes is not None:
        dtypes.update({n: dtype for n in template})
    directions = [{n: rng.standard_normal(x.shape, dtype=np.float32) for n, x in template.items()}
                  for _ in range(groups)]
    rnd = Round(root, clients, [k % groups for k in range(n_clients)], shape,
                {"start": [], "trained": [], "taskvec": []})
    if shared_start:
        save_adapter(ws.initial_dir, config, template, dtypes)
    for k, c in enumerate(clients):
        start_dir = ws.initial_dir if shared_start else ws.start_dir(0, c)
        if shared_start:
            start = template
        else:
            start = random_adapter(shape, rng, zero_b=zero_b)
            if freeze_a:  # FFA-LoRA: every client keeps the one shared A
                start.update({n: template[n] for n in template if ".lora_A." in n})
            save_adapter(start_dir, config, start, dtypes)
        start_ad = read_adapter(start_dir)
        trained = trained_from(_stored(start_ad), directions[rnd.groups[k]], rng, noise=noise, freeze_a=freeze_a)
        save_adapter(ws.trained_dir(0, c), config, trained, dtypes)
        trained_ad = read_adapter(ws.trained_dir(0, c))
        meta = TaskVectorMeta(c, 0, space, FINGERPRINT, sha256_file(start_ad.weights_path), 100 + 10 * k,
                              start_ad.lora_signature())
        write_taskvec(start_ad, trained_ad, ws.taskvec_path(0, c), meta)
        rnd.files["start"].append(start_ad.weights_path)
        rnd.files["trained"].append(trained_ad.weights_path)
        rnd.files["taskvec"].append(ws.taskvec_path(0, c))
        if not keep_trained:
            for f in ws.trained_dir(0, c).iterdir():
                f.unlink()
            ws.trained_dir(0, c).rmdir()
    (root / "synthetic.json").write_text(json.dumps({"clients": clients, "groups": rnd.groups,
                                                     "shape": shape.__dict__}, indent=1, default=list))
    return rnd


def _stored(adapter) -> dict[str, np.ndarray]:
    """An adapter's tensors as stored (after fp16/bf16 rounding), as float32."""

    return safetensors_io.load(adapter.weights_path)[0]
