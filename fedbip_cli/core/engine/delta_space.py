"""The delta-space engine: exact similarity and aggregation of LoRA weight changes, one module at a time.

Per LoRA module, every task vector, trained adapter and output is a combination of the round's
rank-r atoms (`core.coefficients.delta_parts`): ΔW of each distinct start adapter and ΔW of each
client's trained adapter. Gram matrices come from the atoms' Gram identity, outputs from one shared
QR basis per module and a small SVD per output (`core.lowrank`); no out x in matrix is ever formed,
so memory is O(K·r·(out + in)) per module whatever the model's width. Dense tensors (classification
head, modules_to_save) go through the factor-space engine, where plain differences are exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedbip_cli.core.engine import factor_space
from fedbip_cli.core.engine.coefficients import (
    Parts,
    delta_parts,
    gram_of,
    output_coefficients,
    used_parts,
)
from fedbip_cli.core.engine.lowrank import (
    Refactored,
    SharedBasis,
    basis_gram,
    block_gram,
    combine_shared_right,
    refactor,
)
from fedbip_cli.core.engine.round_data import ModuleFactors, RoundData, RoundReader
from fedbip_cli.core.engine.threads import single_threaded_blas
from fedbip_cli.core.files.adapter import module_of
from fedbip_cli.core.strategies.base import Mixing
from fedbip_cli.core.strategies.similarity import add_gram

if TYPE_CHECKING:  # aggregate imports this module
    from fedbip_cli.core.engine.aggregate import Sink


def parts_of(data: RoundData, scales: np.ndarray) -> Parts:
    """The delta-space parts of a round whose task vectors are multiplied by `scales` (clipping)."""
    group, reps = data.groups
    return delta_parts(group, len(reps), scales)


@dataclass(frozen=True)
class Atoms:
    """One module's atoms in the order of `Parts` (start groups, then clients): lefts s·B (J x out x r)
    and rights A (J x r x in)."""

    lefts: np.ndarray
    rights: np.ndarray

    @classmethod
    def of(cls, mf: ModuleFactors) -> Atoms:
        return cls(np.concatenate([mf.start_left, mf.trained_left]), np.concatenate([mf.start_right, mf.trained_right]))

    def nonzero(self) -> np.ndarray:
        """Which atoms are non-zero (a round-0 start has B = 0, so its ΔW is nothing)."""
        j = len(self.lefts)
        return np.asarray(self.lefts.reshape(j, -1).any(axis=1) & self.rights.reshape(j, -1).any(axis=1))

    def stacked(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left: out x m, right: m x in) of the atoms `idx`, side by side / on top of each other."""
        if not len(idx):
            return np.zeros((self.lefts.shape[1], 0)), np.zeros((0, self.rights.shape[2]))
        return np.concatenate(list(self.lefts[idx]), axis=1), np.concatenate(list(self.rights[idx]), axis=0)


def grams(src: RoundReader, need_model: bool,
          scales: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Task-vector (and trained-adapter) Gram matrices per module and overall, in delta space, of the
    task vectors times `scales`."""
    data = src.data
    parts = parts_of(data, scales)
    task: dict[str, np.ndarray] = {}
    model: dict[str, np.ndarray] | None = {} if need_model else None
    rows = (parts.task, parts.trained) if need_model else (parts.task,)
    for module in data.modules:
        atoms = Atoms.of(src.module_factors(module))
        used = np.intersect1d(used_parts(*rows), np.flatnonzero(atoms.nonzero()))
        left, right = atoms.stacked(used)
        full = np.zeros((len(atoms.lefts),) * 2)
        full[np.ix_(used, used)] = block_gram(left, right, [atoms.lefts.shape[2]] * len(used))
        add_gram(task, module, gram_of(parts.task, full))
        if model is not None:
            add_gram(model, module, gram_of(parts.trained, full))
    if data.dense_names:
        factor_space.grams(src, data.dense_names, need_model, scales, task, model)
    return task, model


@dataclass
class Truncation:
    """Squared norms of every output's exact LoRA weight change, of the round's update it applies
    (exact output - its own start) and of what truncation to rank r lost, summed over modules, plus
    the worst module per output."""

    sq_norm: np.ndarray
    sq_error: np.ndarray
    sq_update: np.ndarray
    worst: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> Truncation:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), [(0.0, "") for _ in range(n)])

    def add(self, module: str, res: Refactored) -> None:
        self.sq_norm += res.sq_norm
        self.sq_error += res.sq_error
        if res.sq_update is not None:
            self.sq_update += res.sq_update
        for t, rel in enumerate(res.relative_error):
            if rel > self.worst[t][0]:
                self.worst[t] = (float(rel), module)

    def report(self, labels: list[str]) -> dict[str, dict]:
        """{output: {relative, relative_to_update, max_module_relative, worst_module}}:
        relative = ||exact - written|| / ||exact|| and relative_to_update = ||exact - written|| /
        ||exact - own start|| over all LoRA modules together (Frobenius). The first compares the
        error with the whole adapter's ΔW, the second with what this round changes (far smaller)."""
        err = np.clip(self.sq_error, 0, None)
        rel = np.sqrt(err / np.where(self.sq_norm > 0, self.sq_norm, 1.0))
        upd = np.sqrt(err / np.where(self.sq_update > 0, self.sq_update, 1.0))
        return {lab: {"relative": float(r), "relative_to_update": float(u), "max_module_relative": w[0],
                      "worst_module": w[1] or None}
                for lab, r, u, w in zip(labels, rel, upd, self.worst)}


def refactor_module(atoms: Atoms, coeffs: np.ndarray, own: np.ndarray, rank: int, scale: float) -> Refactored:
    """Rank-`rank` (B, A) of sum_j coeffs[t, j] atom_j for every output t; `own[t]` is the atom of
    output t's own start (its start group), for the size of its update and the shape of a zero sum.

    Atoms with zero coefficients or zero products are left out of the basis. When all remaining atoms
    share one A (frozen A) the sum is exact with that A. An output whose sum is exactly zero gets B = 0
    and its own start's A, so it is the start's rank-r shape, not a dead one.
    """
    nonzero = np.flatnonzero(atoms.nonzero())
    used = np.intersect1d(used_parts(coeffs), nonzero)
    t = len(coeffs)
    update = np.array(coeffs, dtype=np.float64)
    update[np.arange(t), own] -= 1.0
    support = np.intersect1d(used_parts(update), nonzero)
    basis = None
    if len(used) == 0:
        res = Refactored(np.zeros((t,) + atoms.lefts.shape[1:]), np.zeros((t,) + atoms.rights.shape[1:]),
                         np.zeros(t), np.zeros(t))
    elif all(np.array_equal(atoms.rights[used[0]], atoms.rights[j]) for j in used[1:]):
        res = combine_shared_right(atoms.lefts[used], atoms.rights[used[0]], coeffs[:, used], scale)
    else:
        left, right = atoms.stacked(used)
        basis = SharedBasis.of(left, right, [rank] * len(used))
        res = refactor(basis, coeffs[:, used], rank, scale)
    a = res.a
    zero = res.sq_norm == 0
    if zero.any():
        a = np.array(res.a)
        a[zero] = atoms.rights[own[zero]]
    return Refactored(res.b, a, res.sq_norm, res.sq_error, _update_sq_norms(atoms, update, support, used, basis))


def _update_sq_norms(atoms: Atoms, update: np.ndarray, support: np.ndarray, used: np.ndarray,
                     basis: SharedBasis | None) -> np.ndarray:
    """||sum_j update[t, j] atom_j||² per output, by the cheapest exact route: the refactoring's own
    basis when it spans the update, one shared A, or the atoms' Gram matrix."""
    if len(support) == 0:
        return np.zeros(len(update))
    u = update[:, support]
    if basis is not None and np.isin(support, used).all():
        pos = np.searchsorted(used, support)
        gram = basis_gram(basis)[np.ix_(pos, pos)]
    elif all(np.array_equal(atoms.rights[support[0]], atoms.rights[j]) for j in support[1:]):
        right = atoms.rights[support[0]].astype(np.float64)
        b = np.einsum("tj,jor->tor", u, atoms.lefts[support].astype(np.float64))
        return np.einsum("tor,tos,rs->t", b, b, right @ right.T)
    else:
        left, right = atoms.stacked(support)
        gram = block_gram(left, right, [atoms.lefts.shape[2]] * len(support))
    return np.einsum("tj,jk,tk->t", u, gram, u)


def write_outputs(src: RoundReader, mixing: Mixing, scales: np.ndarray, sink: Sink, global_row: np.ndarray | None,
                  n_targets: int, workers: int = 2) -> Truncation:
    """Hand every output tensor to `sink.write(name, rows)` in the order of `data.output_names`,
    factoring up to `workers` modules at once; returns each output's truncation of its LoRA ΔW.
    Workers read and factor modules side by side, so a file's tensors may be read out of order: the
    read hashes (`digest_cache.SequentialHash`) put them back in order."""
    data = src.data
    dparts, fparts = parts_of(data, scales), factor_space.parts_of(data, scales)
    group, _ = data.groups
    own_group = np.append(group, group[data.reference]) if global_row is not None else group
    trunc = Truncation.empty(n_targets)

    def compute(item: tuple[str, str]) -> tuple[str, str, object]:
        kind, key = item
        weights = mixing.for_module(key if kind == "module" else module_of(key))
        if kind == "dense":
            return kind, key, factor_space.mix(src, key, output_coefficients(fparts, weights, mixing.mode, global_row))
        mf = src.module_factors(key)
        coeffs = output_coefficients(dparts, weights, mixing.mode, global_row)
        res = refactor_module(Atoms.of(mf), coeffs, own_group, mf.trained_left.shape[2], mf.scale)
        return kind, key, res

    with single_threaded_blas(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for kind, key, value in _ordered(pool, compute, data.output_order, ahead=max(1, workers)):
            if kind == "dense":
                sink.write(key, value)
                continue
            a_name, b_name = data.lora_names(key)
            sink.write(a_name, value.a)
            sink.write(b_name, value.b)
            trunc.add(key, value)
    return trunc


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """fn(item) for every item, in order, computing up to `ahead` items beyond the one being consumed
    (numpy's LAPACK calls release the GIL, so modules are factored in parallel while one is written)."""
    futures: deque = deque()
    for item in items:
        futures.append(pool.submit(fn, item))
        if len(futures) > ahead:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()
