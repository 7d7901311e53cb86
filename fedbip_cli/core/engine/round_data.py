"""One round's inputs at the coordinator (`RoundData`, read-only) and one pass's reads over them
(`RoundReader`: one tensor, or one module, across all clients).

Task vectors are stored in one space (the files' `space`) and either engine may compute in the
other: a factor-space file plus the start adapter gives the trained factors, and a delta-space file
holds both the trained and the start factors, so each engine asks for what it needs and the reader
converts. Clients that share a start adapter (round 0, late joiners) share one read of it.

What varies between passes is handed in as explicit objects, never set on the round: where bytes
come from and who hashes them (`TensorSource`, e.g. `FileSource` with the digest cache's read
hashes), and how clients of different ranks are padded (`RankPadding`, fixed when the round is
loaded by `RoundData.load`, see `core.engine.mixed_ranks`).

This module is RoundData's one home: the coordinator's steps build it with `RoundData.load`, the
engines (`aggregate`, `factor_space`, `delta_space`) import it from here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedbip_cli.core.engine.mixed_ranks import MixedRanks, module_plans
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


class RankPadding(Protocol):
    """How a round's tensors are seen at one common rank and scale (`core.engine.mixed_ranks`)."""

    def scale(self, module: str) -> float | None:
        """The common scale of `module`, or None when every client's own scale is it."""

    def common_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the engines see for tensor `name` stored as `shape`."""

    def pads(self, name: str) -> bool:
        """Whether reads of tensor `name` are re-expressed at the common rank."""

    def fit_read(self, client: int, is_start: bool, name: str, own: np.ndarray,
                 reference: np.ndarray | None) -> np.ndarray:
        """Client `client`'s tensor `name` (as stored: `own`) at the common rank and scale."""

    def needs_reference(self, client: int, is_start: bool, name: str) -> bool:
        """Whether `fit_read` needs the reference client's start tensor `name`."""

    def fitting(self, clients: list[str], sink: Any) -> Any:
        """The sink outputs go through on their way to `sink` (back to each client's own rank)."""

    def report(self, clients: list[str], sink: Any) -> dict:
        """What weights.json records about the round's ranks, once `fitting(...)`'s sink saw every output."""


class SameRanks:
    """Every client has the same ranks and scales: nothing to pad."""

    def scale(self, module: str) -> float | None:
        return None

    def common_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def pads(self, name: str) -> bool:
        return False

    def fit_read(self, client: int, is_start: bool, name: str, own: np.ndarray,  # pragma: no cover - pads() is False
                 reference: np.ndarray | None) -> np.ndarray:
        return own

    def needs_reference(self, client: int, is_start: bool, name: str) -> bool:  # pragma: no cover
        return False

    def fitting(self, clients: list[str], sink: Any) -> Any:
        return sink

    def report(self, clients: list[str], sink: Any) -> dict:
        return {}


SAME_RANKS = SameRanks()


@dataclass(frozen=True)
class RoundData:
    """One round's inputs at the coordinator, index-aligned by client; read-only once loaded.

    `padding` maps clients of different LoRA ranks to one common rank (`load` picks it);
    `reference` is the client whose adapter config and rank the global adapter takes.
    """

    clients: tuple[str, ...]
    taskvecs: tuple[TaskVector, ...]
    starts: tuple[Adapter, ...]
    padding: RankPadding = SAME_RANKS
    reference: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        object.__setattr__(self, "taskvecs", tuple(self.taskvecs))
        object.__setattr__(self, "starts", tuple(self.starts))
        if not (len(self.clients) == len(self.taskvecs) == len(self.starts)):
            raise ValueError("RoundData: clients, task vectors and start adapters must align")

    @classmethod
    def load(cls, clients: Sequence[str], taskvecs: Sequence[TaskVector], starts: Sequence[Adapter]) -> RoundData:
        """The round of these (checked) task vectors and start adapters, with the `MixedRanks` padding
        when its adapters' ranks or scales differ."""
        plans, ref = module_plans(starts)
        if all(len(set(p.ranks)) == 1 and len(set(p.scales)) == 1 for p in plans.values()):
            return cls(clients=tuple(clients), taskvecs=tuple(taskvecs), starts=tuple(starts))
        return cls(clients=tuple(clients), taskvecs=tuple(taskvecs), starts=tuple(starts),
                   padding=MixedRanks(plans=plans, reference=ref), reference=ref)

    @cached_property
    def num_examples(self) -> np.ndarray:
        out = np.array([tv.meta.num_examples for tv in self.taskvecs], dtype=np.float64)
        out.flags.writeable = False
        return out

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
    def _module_set(self) -> frozenset[str]:
        return frozenset(self.modules)

    def is_factor(self, name: str) -> bool:
        """Whether `name` is a LoRA factor of one of the round's modules."""
        return bool(lora_kind(name)) and module_of(name) in self._module_set

    @cached_property
    def dense_names(self) -> list[str]:
        """Tensors that are not LoRA factors of a module (classification head, modules_to_save)."""
        return [n for n in self.names if not self.is_factor(n)]

    @cached_property
    def output_order(self) -> list[tuple[str, str]]:
        """("dense", name) and ("module", module) items in the order outputs are written: by sorted
        tensor name, a module's two factors together (A, then B)."""
        items, seen = [], set()
        for name in self.names:
            if not self.is_factor(name):
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

    @cached_property
    def groups(self) -> tuple[np.ndarray, list[int]]:
        """(start group of each client, one representative client per group), by start file."""
        index: dict[Path, int] = {}
        group: list[int] = []
        reps: list[int] = []
        for k, a in enumerate(self.starts):
            key = a.weights_path.resolve()
            if key not in index:
                index[key] = len(reps)
                reps.append(k)
            group.append(index[key])
        return np.array(group, dtype=np.intp), reps

    def scale(self, module: str) -> float:
        """The scale every client's factors of `module` are seen at (the common one for mixed ranks)."""
        common = self.padding.scale(module)
        return common if common is not None else self.starts[0].scale(module)

    def common_shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` (of the adapters, or of delta-stored task vectors) as the engines see it,
        the same for every client (padded to the common rank when ranks differ)."""
        header = self.starts[0].header if name in self.starts[0].header.tensors else self.taskvecs[0].header
        return self.padding.common_shape(name, tuple(header.tensors[name].shape))

    @property
    def global_start(self) -> Adapter:
        """The adapter whose config and shapes the global adapter takes."""
        return self.starts[self.reference]

    @cached_property
    def _files(self) -> dict[Path, tuple[int, bool]]:
        """Input file -> (a client it belongs to, whether it is a start adapter)."""
        out = {a.header.path: (k, True) for k, a in enumerate(self.starts)}
        out.update({tv.header.path: (k, False) for k, tv in enumerate(self.taskvecs)})
        return out

    def part_path(self, j: int) -> Path:
        """The file part j (`core.engine.coefficients`: start groups, then clients) comes from."""
        _, reps = self.groups
        return self.starts[reps[j]].weights_path if j < len(reps) else self.taskvecs[j - len(reps)].path

    def reader(self, source: TensorSource | None = None) -> RoundReader:
        """A reader for one pass over the round, reading through `source` (plain files by default)."""
        return RoundReader(self, source if source is not None else FileSource())


class TensorSource(Protocol):
    """Where a pass's tensor bytes come from."""

    def read_into(self, header: safetensors_io.Header, name: str, out: np.ndarray, check_finite: bool) -> None:
        """Read tensor `name` of the file behind `header` into `out` (float32, its stored shape)."""


class FileSource:
    """Positioned reads from the files, each opened once per pass (use as a context manager, or
    `close()`); those in `hashes` are hashed from these very reads (`Digests.read_hashes`), so a
    digest proves which bytes the pass used. Keeping the descriptor also pins the file a pass
    started on: one renamed over it meanwhile is not mixed into the same pass."""

    def __init__(self, hashes: Mapping[Path, SequentialHash] | None = None) -> None:
        self.hashes = dict(hashes or {})
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise UserError(f"{path}: cannot read: {e.strerror}") from None
            return fd

    def read_into(self, header: safetensors_io.Header, name: str, out: np.ndarray, check_finite: bool) -> None:
        sh = self.hashes.get(header.path)
        safetensors_io.read_into(header, name, out, check_finite=check_finite, on_raw=sh.feed if sh else None,
                                 fd=self._fd(header.path))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:  # a reader made without `with` (tests, scripts) still closes its files
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RoundReader:
    """One pass's reads over a round: stacks of one tensor (or one module's factors) across clients,
    in the space the engine asks for, padded to the common rank when ranks differ."""

    def __init__(self, data: RoundData, source: TensorSource) -> None:
        self.data = data
        self.source = source
        self._reference: tuple[str, np.ndarray] | None = None

    def read_into(self, header: safetensors_io.Header, name: str, out: np.ndarray, check_finite: bool = True) -> None:
        """The one place inputs are read: one tensor of one file into `out` (its common shape)."""
        if not self.data.padding.pads(name):
            self.source.read_into(header, name, out, check_finite)
            return
        k, is_start = self.data._files[header.path]
        own = np.empty(tuple(header.tensors[name].shape), dtype=np.float32)
        self.source.read_into(header, name, own, check_finite)
        ref = self._reference_rows(name) if self.data.padding.needs_reference(k, is_start, name) else None
        out[...] = self.data.padding.fit_read(k, is_start, name, own, ref)

    def _reference_rows(self, name: str) -> np.ndarray:
        """The reference client's start tensor `name` (one kept: the engines go a module at a time)."""
        if self._reference is None or self._reference[0] != name:
            header = self.data.global_start.header
            rows = np.empty(tuple(header.tensors[name].shape), dtype=np.float32)
            self.source.read_into(header, name, rows, False)
            self._reference = (name, rows)
        return self._reference[1]

    def _stack(self, headers: list[safetensors_io.Header], name: str, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty((len(headers),) + tuple(shape), dtype=np.float32)
        for row, h in zip(out, headers):
            self.read_into(h, name, row)
        return out

    def start_groups_stack(self, name: str) -> np.ndarray:
        """start_g[name] for every distinct start adapter: G x shape."""
        _, reps = self.data.groups
        return self._stack([self.data.starts[k].header for k in reps], name, self.data.common_shape(name))

    def parts_stack(self, name: str, used: np.ndarray) -> np.ndarray:
        """Factor-space parts of one tensor (`core.engine.coefficients`: start_g for index g < G, then
        tau_k), only those in `used`, stacked in that order. Nothing is checked for NaN here: callers
        check the products they form from it (see `factor_space.mix`)."""
        data = self.data
        _, reps = data.groups
        n_groups = len(reps)
        shape = data.common_shape(name)
        used = np.asarray(used, dtype=np.intp)
        if self._stored_as_is(name):
            out = np.empty((len(used),) + tuple(shape), dtype=np.float32)
            for row, j in zip(out, used):
                h = data.starts[reps[j]].header if j < n_groups else data.taskvecs[j - n_groups].header
                self.read_into(h, name, row, check_finite=False)
            return out
        starts = used[used < n_groups]
        out = np.empty((len(used),) + tuple(shape), dtype=np.float32)
        for row, g in zip(out, starts):
            self.read_into(data.starts[reps[g]].header, name, row, check_finite=False)
        if len(starts) < len(used):
            out[len(starts):] = self.task_stack(name)[used[len(starts):] - n_groups]
        return out

    def _stored_as_is(self, name: str) -> bool:
        """Whether tau[name] is stored under its own name (factor files, and dense tensors of delta files)."""
        return self.data.storage == "factor" or not self.data.is_factor(name)

    def task_stack(self, name: str) -> np.ndarray:
        """Factor-space tau_k[name] of every client (K x shape, clipping not applied), from either storage."""
        data = self.data
        headers = [tv.header for tv in data.taskvecs]
        shape = data.common_shape(name)
        kind, module = lora_kind(name), module_of(name)
        if self._stored_as_is(name):
            return self._stack(headers, name, shape)
        u_name, v_name = delta_names(module)
        if kind == "A":  # V = [A'; A]
            v = self._stack(headers, v_name, data.common_shape(v_name))
            r = v.shape[1] // 2
            return v[:, :r] - v[:, r:]
        u = self._stack(headers, u_name, data.common_shape(u_name))  # U = s [B', -B]
        r = u.shape[2] // 2
        return (u[:, :, :r] + u[:, :, r:]) / np.float32(data.scale(module))

    def module_factors(self, module: str) -> ModuleFactors:
        """Trained and start factors of one LoRA module for the delta-space engine, from either storage."""
        data = self.data
        group, reps = data.groups
        s = data.scale(module)
        headers = [tv.header for tv in data.taskvecs]
        if data.storage == "delta":
            u_name, v_name = delta_names(module)
            u = self._stack(headers, u_name, data.common_shape(u_name))
            v = self._stack(headers, v_name, data.common_shape(v_name))
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
