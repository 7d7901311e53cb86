"""One round's inputs at the coordinator, read lazily, one tensor (or one module) across all clients.

Task vectors are stored in one space (the files' `space`) and either engine may compute in the
other: a factor-space file plus the start adapter gives the trained factors, and a delta-space file
holds both the trained and the start factors, so each engine asks for what it needs and this class
converts. Clients that share a start adapter (round 0, late joiners) share one read of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import (
    Adapter,
    lora_kind,
    lora_modules,
    lora_name,
    module_of,
)
from fedbip_cli.core.files.digest_cache import SequentialHash
from fedbip_cli.core.files.taskvec import TaskVector, delta_names
from fedbip_cli.errors import UserError


@dataclass
class ModuleFactors:
    """The LoRA factors of one module across a round, with the scale s folded into the left factors.

    trained: s·B'_k (K x out x r) and A'_k (K x r x in), one per client;
    start: s·B_g and A_g, one per distinct start adapter g; `group[k]` is client k's start.
    """

    trained_left: np.ndarray
    trained_right: np.ndarray
    start_left: np.ndarray
    start_right: np.ndarray
    group: np.ndarray
    scale: float


@dataclass
class RoundData:
    """One round's inputs at the coordinator, index-aligned by client."""

    clients: list[str]
    taskvecs: list[TaskVector]
    starts: list[Adapter]
    scales: np.ndarray | None = None
    """Per-client factors applied to tau before anything else (norm clipping); None = all 1."""
    hashers: dict[Path, SequentialHash] = field(default_factory=dict)
    """Files to hash from the reads of the next pass over them (`Digests.while_reading`)."""

    @property
    def num_examples(self) -> np.ndarray:
        return np.array([tv.meta.num_examples for tv in self.taskvecs], dtype=np.float64)

    @property
    def storage(self) -> str:
        """The space the task vector files are written in."""
        return self.taskvecs[0].meta.space

    @cached_property
    def names(self) -> list[str]:
        """The adapter's tensor names (what every output adapter holds), sorted."""
        return self.starts[0].names

    @cached_property
    def modules(self) -> list[str]:
        """LoRA modules (those with both factors), sorted."""
        return lora_modules(self.names)

    @cached_property
    def _module_set(self) -> set[str]:
        return set(self.modules)

    @cached_property
    def dense_names(self) -> list[str]:
        """Tensors that are not LoRA factors of a module (classification head, modules_to_save)."""
        return [n for n in self.names if not (lora_kind(n) and module_of(n) in self._module_set)]

    @cached_property
    def output_order(self) -> list[tuple[str, str]]:
        """("dense", name) and ("module", module) items in the order outputs are written: by sorted
        tensor name, a module's two factors together (A, then B)."""
        items, seen = [], set()
        for name in self.names:
            if not (lora_kind(name) and module_of(name) in self._module_set):
                items.append(("dense", name))
            elif module_of(name) not in seen:
                seen.add(module_of(name))
                items.append(("module", module_of(name)))
        return items

    @cached_property
    def output_names(self) -> list[str]:
        """Every output tensor name, in the order of `output_order`."""
        return [n for kind, key in self.output_order for n in ((key,) if kind == "dense" else self.lora_names(key))]

    @staticmethod
    def lora_names(module: str) -> tuple[str, str]:
        return lora_name(module, "A"), lora_name(module, "B")

    @property
    def task_scales(self) -> np.ndarray:  # not cached: clipping sets `scales` after a first pass
        return np.ones(len(self.clients)) if self.scales is None else np.asarray(self.scales, dtype=np.float64)

    @cached_property
    def groups(self) -> tuple[np.ndarray, list[int]]:
        """(start group of each client, one representative client per group), by start file."""
        index: dict[Path, int] = {}
        group, reps = [], []
        for k, a in enumerate(self.starts):
            key = a.weights_path.resolve()
            if key not in index:
                index[key] = len(reps)
                reps.append(k)
            group.append(index[key])
        return np.array(group, dtype=np.intp), reps

    def scale(self, module: str) -> float:
        return self.starts[0].scale(module)

    def common_shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` (of the adapters, or of delta-stored task vectors) as the engines see it,
        the same for every client. Clients of different LoRA ranks: core/engine/mixed_ranks.py overrides this,
        `scale` and `read_into` to pad every client to the round's common rank and scale."""
        header = self.starts[0].header if name in self.starts[0].header.tensors else self.taskvecs[0].header
        return tuple(header.tensors[name].shape)

    @property
    def global_start(self) -> Adapter:
        """The adapter whose config and shapes the global adapter takes."""
        return self.starts[0]

    def output_sink(self, sink):
        """The sink outputs go through on their way to `sink` (core/engine/mixed_ranks.py fits each to its own rank)."""
        return sink

    def read_into(self, header: safetensors_io.Header, name: str, out: np.ndarray, check_finite: bool = True) -> None:
        """The one place inputs are read: a positioned read of one tensor into `out` (float32).
        Tests override it to serve whole files loaded in memory, and compare the outputs' bytes.
        Files in `hashers` are hashed from these reads (see `digests.SequentialHash`)."""
        sh = self.hashers.get(header.path)
        safetensors_io.read_into(header, name, out, check_finite=check_finite, on_raw=sh.feed if sh else None)

    def _stack(self, headers: list[safetensors_io.Header], name: str, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty((len(headers),) + tuple(shape), dtype=np.float32)
        for row, h in zip(out, headers):
            self.read_into(h, name, row)
        return out

    def start_groups_stack(self, name: str) -> np.ndarray:
        """start_g[name] for every distinct start adapter: G x shape."""
        _, reps = self.groups
        return self._stack([self.starts[k].header for k in reps], name, self.common_shape(name))

    def start_stack(self, name: str) -> np.ndarray:
        """start_k[name] for every client: K x shape (each distinct start file read once)."""
        group, _ = self.groups
        return self.start_groups_stack(name)[group]

    def parts_stack(self, name: str, used: np.ndarray) -> np.ndarray:
        """Factor-space parts of one tensor (`core.coefficients`: start_g for index g < G, then tau_k),
        only those in `used`, stacked in that order. Nothing is checked for NaN here: callers check
        the products they form from it (see `factor.check_finite_rows`)."""
        _, reps = self.groups
        n_groups = len(reps)
        shape = self.common_shape(name)
        used = np.asarray(used, dtype=np.intp)
        if self._stored_as_is(name):
            out = np.empty((len(used),) + tuple(shape), dtype=np.float32)
            for row, j in zip(out, used):
                h = self.starts[reps[j]].header if j < n_groups else self.taskvecs[j - n_groups].header
                self.read_into(h, name, row, check_finite=False)
            return out
        starts = used[used < n_groups]
        out = np.empty((len(used),) + tuple(shape), dtype=np.float32)
        for row, g in zip(out, starts):
            self.read_into(self.starts[reps[g]].header, name, row, check_finite=False)
        if len(starts) < len(used):
            out[len(starts):] = self.task_stack(name)[used[len(starts):] - n_groups]
        return out

    def part_path(self, j: int) -> Path:
        """The file part j of `parts_stack` comes from (for error messages)."""
        _, reps = self.groups
        return self.starts[reps[j]].weights_path if j < len(reps) else self.taskvecs[j - len(reps)].path

    def _stored_as_is(self, name: str) -> bool:
        """Whether tau[name] is stored under its own name (factor files, and dense tensors of delta files)."""
        return self.storage == "factor" or not lora_kind(name) or module_of(name) not in self._module_set

    def task_stack(self, name: str) -> np.ndarray:
        """Factor-space tau_k[name] of every client (K x shape, scales not applied), from either storage."""
        headers = [tv.header for tv in self.taskvecs]
        shape = self.common_shape(name)
        kind, module = lora_kind(name), module_of(name)
        if self._stored_as_is(name):
            return self._stack(headers, name, shape)
        u_name, v_name = delta_names(module)
        if kind == "A":  # V = [A'; A]
            v = self._stack(headers, v_name, self.common_shape(v_name))
            r = v.shape[1] // 2
            return v[:, :r] - v[:, r:]
        u = self._stack(headers, u_name, self.common_shape(u_name))  # U = s [B', -B]
        r = u.shape[2] // 2
        return (u[:, :, :r] + u[:, :, r:]) / np.float32(self.scale(module))

    def module_factors(self, module: str) -> ModuleFactors:
        """Trained and start factors of one LoRA module for the delta-space engine, from either storage."""
        group, reps = self.groups
        s = self.scale(module)
        headers = [tv.header for tv in self.taskvecs]
        if self.storage == "delta":
            u_name, v_name = delta_names(module)
            u = self._stack(headers, u_name, self.common_shape(u_name))
            v = self._stack(headers, v_name, self.common_shape(v_name))
            r = v.shape[1] // 2
            for k, g in enumerate(group):
                rep = reps[g]
                if not (np.array_equal(u[k, :, r:], u[rep, :, r:]) and np.array_equal(v[k, r:], v[rep, r:])):
                    raise UserError(f"{headers[k].path}: start factors of {module!r} differ from those in "
                                    f"{headers[rep].path.name}, though both name the same start adapter")
            return ModuleFactors(u[:, :, :r], v[:, :r], -u[reps, :, r:], v[reps, r:], group, s)
        a_name, b_name = lora_name(module, "A"), lora_name(module, "B")
        start_a, start_b = self.start_groups_stack(a_name), self.start_groups_stack(b_name)
        trained_a = self._stack(headers, a_name, start_a.shape[1:]) + start_a[group]
        trained_b = self._stack(headers, b_name, start_b.shape[1:]) + start_b[group]
        f = np.float32(s)
        return ModuleFactors(trained_b * f, trained_a, start_b * f, start_a, group, s)
