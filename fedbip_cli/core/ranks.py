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
run on these as on equal-rank adapters. Client i receives its result back at its own rank by the
inverse map, keeping the first r_i rows of A and columns of B, with B scaled by s_R / s_i.

Going back to a smaller rank is where the factor space loses something: components r_i..R of the
aggregate (which only higher-rank clients fill) are dropped; their share of the aggregate's weight
change is reported per client (`truncation`). With nested initial A's (client/lora_init.py) those
components are the same directions in every adapter, and with frozen A (lora.freeze_a) the padded
aggregate of the largest-rank clients is exactly the weighted sum of the clients' ΔW. The delta
space makes every client exact (docs/delta-space.md): padded adapters have one rank, so the low-rank
engine applies unchanged; its SVD orders components by singular value, so keeping the first r_i
is then the best rank-r_i approximation.

numpy only: the coordinator imports no torch, transformers or peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError
from . import stfile
from .adapter import Adapter, lora_kind, module_of
from .aggregate import RoundData

RANK_KEYS = ("r", "lora_alpha", "use_rslora")
"""LoRA settings that may differ between clients of one round (they change ranks and scales only)."""


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


def product_norm2(b: np.ndarray, a: np.ndarray) -> float:
    """||B A||_F^2 without forming B A: sum((B^T B) * (A A^T)), O(r^2 (out + in))."""
    b, a = b.astype(np.float64), a.astype(np.float64)
    return float(np.sum((b.T @ b) * (a @ a.T)))


def same_but_rank(sig_a: dict[str, Any], sig_b: dict[str, Any]) -> bool:
    """Whether two adapters' LoRA signatures differ at most in rank, alpha and rsLoRA."""
    return all(sig_a.get(k) == sig_b.get(k) for k in set(sig_a) | set(sig_b) if k not in RANK_KEYS)


def same_shape_but_rank(name: str, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two tensors of one name agree in shape, a LoRA factor's rank dimension aside."""
    kind = lora_kind(name)
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


@dataclass
class MixedRankRoundData(RoundData):
    """RoundData whose adapters differ in rank or scale: read padded to the common rank and scale,
    written back at each client's own (see the module docstring)."""

    plans: dict[str, ModulePlan] = field(default_factory=dict)
    reference: int = 0
    truncation: dict[str, list[float]] = field(default_factory=dict)
    """client -> [||dropped ΔW||^2, ||aggregate ΔW||^2] summed over modules, filled while writing."""
    _pending: dict[tuple[int, str], np.ndarray] = field(default_factory=dict, repr=False)
    _fill: tuple[str, Any] = field(default=("", None), repr=False)

    @property
    def global_start(self) -> Adapter:
        return self.starts[self.reference]

    def common(self, k: int, name: str, tensor: np.ndarray, *, start: bool) -> np.ndarray:
        kind = lora_kind(name)
        plan = self.plans.get(module_of(name)) if kind else None
        if plan is None:
            return tensor
        fill = self._reference_rows(name) if start and kind == "A" and plan.ranks[k] < plan.rank else None
        return fit_factor(tensor, kind, plan.rank, plan.scales[k], plan.scale, fill)

    def _reference_rows(self, name: str) -> np.ndarray:
        """The reference client's start A of `name` (one tensor cached: the engine goes name by name)."""
        if self._fill[0] != name:
            self._fill = (name, stfile.read_tensor(self.starts[self.reference].header, name))
        return self._fill[1]

    def output(self, i: int | None, name: str, tensor: np.ndarray) -> np.ndarray:
        module, kind = module_of(name), lora_kind(name)
        plan = self.plans.get(module) if kind else None
        if plan is None or i is None:
            return tensor
        if plan.ranks[i] < plan.rank:
            self._account(i, module, kind, tensor, plan)
        return fit_factor(tensor, kind, plan.ranks[i], plan.scale, plan.scales[i])

    def _account(self, i: int, module: str, kind: str, tensor: np.ndarray, plan: ModulePlan) -> None:
        """Collect the dropped share of client i's aggregate ΔW (A arrives before B: sorted names)."""
        if kind == "A":
            self._pending[(i, module)] = tensor
            return
        a = self._pending.pop((i, module), None)
        if a is None:
            return
        r = plan.ranks[i]
        acc = self.truncation.setdefault(self.clients[i], [0.0, 0.0])
        acc[0] += plan.scale ** 2 * product_norm2(tensor[:, r:], a[r:])
        acc[1] += plan.scale ** 2 * product_norm2(tensor, a)

    def report(self) -> dict[str, Any]:
        """What weights.json records about the ranks of the round."""
        return {
            "ranks": {c: max(p.ranks[k] for p in self.plans.values()) for k, c in enumerate(self.clients)},
            "common_rank": max(p.rank for p in self.plans.values()),
            "reference": self.clients[self.reference],
            "rank_truncation": {c: round(float(np.sqrt(d / t)) if t > 0 else 0.0, 6)
                                for c, (d, t) in self.truncation.items()},
        }


def module_plans(starts: list[Adapter]) -> tuple[dict[str, ModulePlan], int]:
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


def for_round(data: RoundData) -> RoundData:
    """`data` itself when every client's adapter has the same ranks and scales, else its mixed-rank view."""
    plans, ref = module_plans(data.starts)
    if all(len(set(p.ranks)) == 1 and len(set(p.scales)) == 1 for p in plans.values()):
        return data
    return MixedRankRoundData(data.clients, data.taskvecs, data.starts, data.scales, plans=plans, reference=ref)

