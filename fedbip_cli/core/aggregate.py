"""The aggregation engine: applies a strategy's Mixing to a round's task vectors, one tensor at a time.

Inputs: K task vectors and the K start adapters they were made from (clients sharing a start adapter
share one read). Outputs: one PEFT adapter folder per client plus the example-weighted global
adapter, each written as a stream to a temporary folder that is swapped into place at the end, so
memory holds a few tensors x K, never K whole adapters.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import stfile
from .adapter import WEIGHTS_FILE, Adapter, module_of, write_adapter_config
from .atomic import atomic_dir
from .robust import clip_scales, scale_grams
from .similarity import GLOBAL, accumulate_grams
from .strategies.base import Mixing, RoundStats
from .taskvec import TaskVector
from .weights import example_weights


@dataclass
class RoundData:
    """One round's inputs at the coordinator, index-aligned by client."""

    clients: list[str]
    taskvecs: list[TaskVector]
    starts: list[Adapter]
    scales: np.ndarray | None = None
    """Per-client factors applied to tau before anything else (norm clipping); None = all 1."""

    @property
    def num_examples(self) -> np.ndarray:
        return np.array([tv.meta.num_examples for tv in self.taskvecs], dtype=np.float64)

    @property
    def names(self) -> list[str]:
        return sorted(self.taskvecs[0].header.tensors)

    def task_stack(self, name: str) -> np.ndarray:
        """tau_k[name] for every client, stacked: K x shape."""
        stack = np.stack([self.common(k, name, stfile.read_tensor(tv.header, name), start=False)
                          for k, tv in enumerate(self.taskvecs)])
        if self.scales is not None:
            stack *= self.scales.reshape((-1,) + (1,) * (stack.ndim - 1)).astype(np.float32)
        return stack

    def start_stack(self, name: str) -> np.ndarray:
        """start_k[name] for every client, reading each distinct start file once."""
        cache: dict[Path, np.ndarray] = {}
        rows = []
        for k, a in enumerate(self.starts):
            if a.weights_path not in cache:
                cache[a.weights_path] = stfile.read_tensor(a.header, name)
            rows.append(self.common(k, name, cache[a.weights_path], start=True))
        return np.stack(rows)

    # Hooks for clients of different LoRA ranks (core/ranks.py): identities when all ranks agree.
    def common(self, k: int, name: str, tensor: np.ndarray, *, start: bool) -> np.ndarray:
        """Client k's tensor `name` (of its start adapter, or of its task vector) in the round's common shape."""
        return tensor

    def output(self, i: int | None, name: str, tensor: np.ndarray) -> np.ndarray:
        """Client i's output tensor (None: the global adapter's) in that adapter's own shape."""
        return tensor

    @property
    def global_start(self) -> Adapter:
        """The adapter whose config and shapes the global adapter takes."""
        return self.starts[0]


def round_stats(data: RoundData, need_model_gram: bool, clip_factor: float | None = None) -> RoundStats:
    """Stream over the tensors once (twice with model Grams) and collect what strategies look at.

    With `clip_factor`, task vectors longer than clip_factor x the round's median norm are scaled
    down to it (data.scales is set, so the aggregation applies the same scaling).
    """
    data.scales = None
    task = accumulate_grams(data.names, data.task_stack)
    if clip_factor:
        data.scales = clip_scales(np.sqrt(np.clip(np.diag(task[GLOBAL]), 0, None)), clip_factor)
        task = scale_grams(task, data.scales)
    model = None
    if need_model_gram:
        model = accumulate_grams(data.names, lambda n: data.start_stack(n) + data.task_stack(n))
    return RoundStats(list(data.clients), data.num_examples, task, model)


def mix_tensor(mixing: Mixing, module: str, starts: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Apply the weights to one tensor: returns K x shape."""
    w = mixing.for_module(module).astype(np.float64)
    k = taus.shape[0]
    flat_t = taus.reshape(k, -1).astype(np.float64)
    if mixing.mode == "delta":
        out = starts.reshape(k, -1) + w @ flat_t
    else:
        out = w @ (starts.reshape(k, -1).astype(np.float64) + flat_t)
    return out.reshape(taus.shape).astype(np.float32)


def write_round_outputs(data: RoundData, mixing: Mixing, out_dirs: Sequence[Path], global_dir: Path | None) -> None:
    """Write every client's personalized adapter (and the global one) as PEFT adapter folders."""
    names = data.names
    n_ex = example_weights(data.num_examples)
    with ExitStack() as stack:
        targets = list(zip(out_dirs, data.starts))
        if global_dir is not None:
            targets.append((global_dir, data.global_start))
        writers = []
        for folder, start in targets:
            tmp = stack.enter_context(atomic_dir(folder))
            write_adapter_config(tmp, start.config)
            layout = {n: (start.header.tensors[n].dtype, start.header.tensors[n].shape) for n in names}
            writers.append(stack.enter_context(stfile.StreamWriter(tmp / WEIGHTS_FILE, layout, {"format": "pt"})))
        for name in names:
            starts, taus = data.start_stack(name), data.task_stack(name)
            mixed = mix_tensor(mixing, module_of(name), starts, taus)
            for i in range(len(out_dirs)):
                writers[i].write(name, data.output(i, name, mixed[i]))
            if global_dir is not None:
                trained = (starts.reshape(len(n_ex), -1) + taus.reshape(len(n_ex), -1)).astype(np.float64)
                writers[-1].write(name, data.output(None, name, (n_ex @ trained).reshape(taus.shape[1:])))
        # writers close (rename files) before their folders are swapped in: ExitStack unwinds in reverse
