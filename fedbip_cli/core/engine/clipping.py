"""Norm clipping against poisoned task vectors: the rule, and the multipliers it gives a round.

A client that scales its task vector up (x100) keeps its cosine, so similarity weighting alone would
let it move its neighbours 100 times as far. Clipping every vector to a bound derived from the round
itself caps that and leaves honest vectors of ordinary size untouched. Sign-flipped and random vectors
are handled by the weighting (negative or near-zero cosine: no or little weight).

The rule (docs/reliability.md, "Clipping"), over the norms of the vectors actually aggregated:

- all-zero vectors (idle clients) are not counted;
- with n >= 3 non-zero vectors: bound = factor x their *lower* median (the ceil(n/2)-th smallest
  norm). With at most half of the n vectors hostile, the lower median is at most the largest honest
  norm, so no vector, hostile or not, is longer than factor x the largest honest norm after clipping;
  with fewer than half hostile it is also at least the smallest honest norm;
- with n < 3: the bound of the most recent earlier round that had n >= 3 (`history`, same space);
  without one, the lower median of two (factor x the shorter one), and no bound for a single vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbip_cli.errors import UserError

MIN_FOR_MEDIAN = 3
"""Fewer non-zero vectors than this take the historical bound when there is one."""


@dataclass(frozen=True)
class Clip:
    """The clipping of one round: per-client multipliers and how their bound was found."""

    scales: np.ndarray
    bound: float | None
    rule: str
    """"median" (factor x lower median of this round), "history" (an earlier round's median bound),
    "pair" (factor x the shorter of two), "none" (one vector or none, no history), "off" (no factor)."""
    nonzero: int

    @property
    def active(self) -> bool:
        """Whether any vector is scaled down."""
        return bool((self.scales < 1).any())

    def record(self, clients: list[str]) -> dict:
        """What weights.json keeps of it: the bound and rule, and every clipped client's multiplier."""
        return {"rule": self.rule, "bound": self.bound, "nonzero_vectors": self.nonzero,
                "clipped": {c: round(float(s), 6) for c, s in zip(clients, self.scales) if s < 1}}


def check_factor(factor: float | None, where: str = "aggregation.clip_factor") -> float | None:
    """`factor` if it is None (clipping off) or a finite positive number, else a UserError naming `where`."""
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise UserError(f"{where}: must be a positive number or null, got {factor!r}")
    return float(factor)


def lower_median(values: np.ndarray) -> float:
    """The ceil(n/2)-th smallest value: a median that is always one of the values (never a mean of two)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(ordered[(len(ordered) - 1) // 2])


def clip_round_norms(norms: np.ndarray, factor: float | None, history: float | None = None) -> Clip:
    """The clipping of a round whose task vectors have L2 norms `norms` (see the module docstring).

    `history`: the bound an earlier round's median rule set (used when fewer than three vectors are
    non-zero). Multipliers are min(1, bound / norm); zero vectors keep 1.
    """
    norms = np.asarray(norms, dtype=np.float64)
    factor = check_factor(factor)
    nonzero = norms[norms > 0]
    ones = np.ones_like(norms)
    if factor is None:
        return Clip(ones, None, "off", len(nonzero))
    if len(nonzero) >= MIN_FOR_MEDIAN:
        bound, rule = factor * lower_median(nonzero), "median"
    elif history is not None:
        bound, rule = float(history), "history"
    elif len(nonzero) == 2:
        bound, rule = factor * lower_median(nonzero), "pair"
    else:
        return Clip(ones, None, "none", len(nonzero))
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(norms > bound, bound / np.where(norms > 0, norms, 1.0), 1.0)
    return Clip(scales, bound, rule, len(nonzero))


def scale_grams(grams: Mapping[str, np.ndarray], scales: np.ndarray) -> dict[str, np.ndarray]:
    """Gram matrices of the scaled vectors: diag(c) G diag(c)."""
    outer = np.outer(scales, scales)
    return {k: g * outer for k, g in grams.items()}
