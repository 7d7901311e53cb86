"""Clients whose LoRA adapters differ in rank (or alpha) aggregated in factor space, by zero-padding
every adapter to a common rank with its scale folded into B.

The rule (docs/tasks.md, "Mixed ranks"). Per LoRA module, client k holds A_k (r_k x in), B_k (out x r_k)
and scale s_k (alpha_k / r_k, or alpha_k / sqrt(r_k) with rsLoRA): ΔW_k = s_k B_k A_k. The round's
common rank R is the largest r_k, its common scale s_R the scale of the *reference* client (the
first, by name, of those with rank R). Client k's tensors become

    A'_k = [A_k; F_k]          (R x in)      B'_k = [(s_k / s_R) B_k, 0]      (out x R)

so that s_R B'_k A'_k = s_k B_k A_k exactly, whatever the rows F_k: every client's weight change is
unchanged, and all adapters have one shape and one scale. Task vectors pad with zeros (F_k = 0);
start adapters pad A with the reference client's start rows r_k..R, so that averaging adapters
(fedavg, fedamp: a weighted sum of the A's themselves) does not shrink the rows lower-rank clients
lack towards zero. Similarity and mixing then
run on these as on equal-rank adapters, in either engine. Client i receives its result back at its
own rank by the inverse map, keeping the first r_i rows of A and columns of B, with B scaled by
s_R / s_i. The global adapter takes the reference client's rank and config.

Going back to a smaller rank is where the factor space loses something: components r_i..R of the
aggregate (which only higher-rank clients fill) are dropped; their share of the aggregate's weight
change is reported per client (`rank_truncation`). In factor space, with nested initial A's
(client/lora_init.py) those components are the same directions in every adapter, and with frozen A
(lora.freeze_a) the padded aggregate of the largest-rank clients is exactly the weighted sum of the
clients' ΔW. In delta space (docs/delta-space.md) padding changes no ΔW, so the exact low-rank
engine runs unchanged on the padded factors; its SVD orders components by singular value, so
keeping the first r_i is the best rank-r_i approximation of each client's exact sum.

The padding happens where the engines read (`RoundReader.read_into` asks the round's `MixedRanks`),
for factor- and delta-stored task vectors alike (a delta file's U = s·[B', -B] and V = [A'; A] pad
each half); outputs go back to each client's rank through `MixedRanks.fitting`. `RoundData.load`
(core/engine/round_data.py) picks the padding when a round is loaded.

numpy only: the coordinator imports no torch, transformers or peft.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedbip_cli.core.files.adapter import Adapter, lora_kind, module_of
from fedbip_cli.errors import UserError

if TYPE_CHECKING:  # aggregate imports this module (through round_data)
    from fedbip_cli.core.engine.aggregate import Sink

RANK_KEYS = ("r", "lora_alpha", "use_rslora")
"""LoRA settings that may differ between clients of one round (they change ranks and scales only)."""
DELTA_SUFFIXES = (".delta_U", ".delta_V")


def fit_factor(x: np.ndarray, kind: str, rank: int, scale_from: float, scale_to: float,
               fill: np.ndarray | None = None) -> np.ndarray:
    """A LoRA factor re-expressed at `rank` and scale `scale_to`, by padding or cutting.

    A (r x in): rows; new rows come from `fill` (rows r..rank of another A), else zeros.
    B (out x r): columns, times scale_from / scale_to; new columns are zeros.
    Padding keeps scale_to B' A' = scale_from B A exactly (B's new columns are zero, so A's new
    rows do not count); cutting keeps the first `rank` components.
    """
    if kind == "A":
        out = np.zeros((rank, x.shape[1]), dtype=np.float32)
        n = min(rank, x.shape[0])
        out[:n] = x[:n]
        if fill is not None and rank > n:
            out[n:] = fill[n:rank]
        return out
    out = np.zeros((x.shape[0], rank), dtype=np.float32)
    n = min(rank, x.shape[1])
    out[:, :n] = x[:, :n] * np.float32(scale_from / scale_to)
    return out


def pad_halves(x: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A delta-stored U (out x 2r, axis 1) or V (2r x in, axis 0) padded to 2·rank: each half [trained | start]
    padded with zeros on its own (the scale is already folded into U)."""
    r = x.shape[axis] // 2
    shape = list(x.shape)
    shape[axis] = 2 * rank
    out = np.zeros(shape, dtype=np.float32)
    first, second = [slice(None)] * 2, [slice(None)] * 2
    first[axis], second[axis] = slice(0, r), slice(rank, rank + r)
    out[tuple(first)] = np.take(x, range(r), axis=axis)
    out[tuple(second)] = np.take(x, range(r, 2 * r), axis=axis)
    return out


def product_norm2(b: np.ndarray, a: np.ndarray) -> float:
    """||B A||_F^2 without forming B A: sum((B^T B) * (A A^T)), O(r^2 (out + in))."""
    b, a = b.astype(np.float64), a.astype(np.float64)
    return float(np.sum((b.T @ b) * (a @ a.T)))


def same_but_rank(sig_a: dict[str, Any], sig_b: dict[str, Any]) -> bool:
    """Whether two adapters' LoRA signatures differ at most in rank, alpha and rsLoRA."""
    return all(sig_a.get(k) == sig_b.get(k) for k in set(sig_a) | set(sig_b) if k not in RANK_KEYS)


def same_shape_but_rank(name: str, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two tensors of one name agree in shape, the rank dimension of a LoRA factor (A, B, or a
    delta-stored U, V) aside."""
    kind = lora_kind(name) or {".delta_U": "B", ".delta_V": "A"}.get(name[-8:])
    if kind is None or len(a) != 2 or len(b) != 2:
        return tuple(a) == tuple(b)
    return a[1] == b[1] if kind == "A" else a[0] == b[0]


@dataclass(frozen=True)
class ModulePlan:
    """One LoRA module across the round: each client's rank and scale, and the common ones."""

    ranks: tuple[int, ...]
    scales: tuple[float, ...]
    rank: int
    scale: float


@dataclass(frozen=True)
class MixedRanks:
    """The `RankPadding` of a round whose adapters differ in rank or scale: reads padded to the
    common rank and scale, outputs fitted back to each client's own (see the module docstring).
    Stateless: what writing the outputs records lives in the `FittingSink` it hands out."""

    plans: dict[str, ModulePlan]
    reference: int

    @staticmethod
    def _split(name: str) -> tuple[str, str] | None:
        """(module, 'A' | 'B' | 'U' | 'V') of a LoRA factor name, None for dense tensors."""
        kind = lora_kind(name)
        if kind:
            return module_of(name), kind
        for suffix in DELTA_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)], suffix[-1]
        return None

    def _plan(self, name: str) -> tuple[str, str, ModulePlan] | None:
        split = self._split(name)
        if split is None or split[0] not in self.plans:
            return None
        return split[0], split[1], self.plans[split[0]]

    def scale(self, module: str) -> float | None:
        return self.plans[module].scale if module in self.plans else None

    def pads(self, name: str) -> bool:
        return self._plan(name) is not None

    def common_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        found = self._plan(name)
        if found is None:
            return shape
        _, kind, plan = found
        axis, mult = {"A": (0, 1), "B": (1, 1), "U": (1, 2), "V": (0, 2)}[kind]
        out = list(shape)
        out[axis] = mult * plan.rank
        return tuple(out)

    def needs_reference(self, client: int, is_start: bool, name: str) -> bool:
        found = self._plan(name)
        return found is not None and is_start and found[1] == "A" and found[2].ranks[client] < found[2].rank

    def fit_read(self, client: int, is_start: bool, name: str, own: np.ndarray,
                 reference: np.ndarray | None) -> np.ndarray:
        """Client `client`'s tensor `name` padded to the common rank and scale (start A's new rows from
        the reference client's start, `reference`)."""
        found = self._plan(name)
        if found is None:  # pads(name) is False: read as stored
            return own
        _, kind, plan = found
        if kind in "UV":
            return pad_halves(own, plan.rank, 1 if kind == "U" else 0)
        return fit_factor(own, kind, plan.rank, plan.scales[client], plan.scale, reference)

    def fitting(self, clients: list[str], sink: Sink) -> FittingSink:
        """A sink that passes every output on to `sink` at its client's own rank and scale."""
        return FittingSink(self, list(clients), sink)

    def report(self, clients: list[str], sink: "FittingSink") -> dict[str, Any]:
        """What weights.json records about the ranks of the round, with what `sink` (from `fitting`) cut."""
        truncation = sink.truncation
        return {
            "ranks": {c: max(p.ranks[k] for p in self.plans.values()) for k, c in enumerate(clients)},
            "common_rank": max(p.rank for p in self.plans.values()),
            "reference": clients[self.reference],
            "rank_truncation": {c: round(float(np.sqrt(d / t)) if t > 0 else 0.0, 6)
                                for c, (d, t) in truncation.items()},
        }


class FittingSink:
    """Passes every output tensor on to `sink`, each output's row at its own rank and scale, and
    records the share of ΔW a smaller rank drops (`truncation`: client -> [||dropped ΔW||², ||ΔW||²]).

    Outputs at the common rank are written A before B for each module (sorted names; the delta
    engine writes a module's A, then its B), which the truncation accounting relies on."""

    def __init__(self, padding: MixedRanks, clients: list[str], sink: Sink) -> None:
        self.padding, self.clients, self.sink = padding, clients, sink
        self.pending: dict[tuple[int, str], np.ndarray] = {}
        self.truncation: dict[str, list[float]] = {}

    def write(self, name: str, rows: np.ndarray | Sequence[np.ndarray]) -> None:
        self.sink.write(name, [self._fit(t, name, row) for t, row in enumerate(rows)])

    def _fit(self, t: int, name: str, row: np.ndarray) -> np.ndarray:
        """Output t's tensor `name` at its own rank and scale (t = len(clients): the global adapter, kept
        at the reference's)."""
        found = self.padding._plan(name)
        if found is None or t >= len(self.clients):
            return row
        module, kind, plan = found
        r = plan.ranks[t]
        if r < plan.rank:
            if kind == "A":
                self.pending[(t, module)] = row
            elif (t, module) in self.pending:
                a = self.pending.pop((t, module))
                acc = self.truncation.setdefault(self.clients[t], [0.0, 0.0])
                acc[0] += plan.scale ** 2 * product_norm2(row[:, r:], a[r:])
                acc[1] += plan.scale ** 2 * product_norm2(row, a)
        return fit_factor(row, kind, r, plan.scale, plan.scales[t])


def module_plans(starts: Sequence[Adapter]) -> tuple[dict[str, ModulePlan], int]:
    """Per LoRA module, every client's rank (from its start adapter's A) and scale, and the reference
    client: the first of those with the largest rank in every module."""
    names = starts[0].names
    modules = sorted({module_of(n) for n in names if lora_kind(n) == "A"})
    ranks = {m: tuple(int(a.header.tensors[f"{m}.lora_A.weight"].shape[0]) for a in starts) for m in modules}
    top = [k for k in range(len(starts)) if all(ranks[m][k] == max(ranks[m]) for m in modules)]
    if not top:
        raise UserError(f"{starts[0].folder}: mixed LoRA ranks need one client with the largest rank in every "
                        f"module (rank patterns differ too much)")
    ref = top[0]
    plans = {}
    for m in modules:
        scales = tuple(float(a.scale(m)) for a in starts)
        plans[m] = ModulePlan(ranks[m], scales, ranks[m][ref], scales[ref])
    return plans, ref

