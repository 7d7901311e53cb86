"""What every output of a round is made of: coefficients over the round's distinct parts.

Both engines see a tensor (factor space) or a module's weight change (delta space) of a round as
linear combinations of G + K parts: one per distinct start adapter, then one per client.

- factor space: parts are [start_g ..., tau_k ...];
- delta space: parts are [ΔW(start_g) ..., ΔW(trained_k) ...] (each a rank-r product, so a
  module's parts are the low-rank "atoms" of `core.lowrank`).

A `Parts` object holds, in that basis, each client's task vector, trained adapter and own start;
`output_coefficients` turns a strategy's Mixing into one row per output (K clients, then the global
adapter). Writing everything through one coefficient matrix lets each engine make all outputs of a
tensor with a single matrix product, and lets clients that share a start adapter share its read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedbip_cli.core.strategies.base import Mode


@dataclass(frozen=True)
class Parts:
    """Rows (one per client) over the G + K parts: task vector, trained adapter, own start."""

    task: np.ndarray
    trained: np.ndarray
    own_start: np.ndarray
    n_groups: int


def _onehot_groups(group: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((len(group), n_groups))
    out[np.arange(len(group)), group] = 1.0
    return out


def factor_parts(group: np.ndarray, n_groups: int, scales: np.ndarray) -> Parts:
    """Parts [start_g, tau_k]: tau_k = c_k·e_k, trained_k = start_g(k) + c_k·tau_k."""
    own = _onehot_groups(group, n_groups)
    c = np.diag(np.asarray(scales, dtype=np.float64))
    zero = np.zeros_like(own)
    return Parts(np.hstack([zero, c]), np.hstack([own, c]), np.hstack([own, np.zeros_like(c)]), n_groups)


def delta_parts(group: np.ndarray, n_groups: int, scales: np.ndarray) -> Parts:
    """Parts [ΔW(start_g), ΔW(trained_k)]: tau_k = c_k (T_k - Z_g(k)), trained_k = Z_g(k) + tau_k."""
    own = _onehot_groups(group, n_groups)
    c = np.asarray(scales, dtype=np.float64)
    diag = np.diag(c)
    return Parts(np.hstack([-own * c[:, None], diag]), np.hstack([own * (1 - c)[:, None], diag]),
                 np.hstack([own, np.zeros_like(diag)]), n_groups)


def output_coefficients(parts: Parts, weights: np.ndarray, mode: Mode, global_row: np.ndarray | None) -> np.ndarray:
    """One row per output over the parts: K clients (then the global adapter when `global_row` is given).

    mode "update": new_i = start_i + sum_k W_ik tau_k;  mode "model": new_i = sum_k W_ik trained_k;
    global: sum_k n_k trained_k.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows = parts.own_start + w @ parts.task if mode == "update" else w @ parts.trained
    if global_row is not None:
        rows = np.vstack([rows, np.asarray(global_row, dtype=np.float64) @ parts.trained])
    return rows


def gram_of(rows: np.ndarray, part_gram: np.ndarray) -> np.ndarray:
    """Gram matrix of the vectors `rows` @ parts, from the parts' own Gram matrix."""
    return rows @ part_gram @ rows.T


def used_parts(*row_sets: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Indices of the parts any of `row_sets` gives a non-negligible coefficient.

    In update mode a start shared by every client gets 1 - sum_k W_ik = 0 (up to rounding): dropping
    it saves reading it (factor space) or a rank-r block of every QR (delta space).
    """
    stacked = np.vstack([np.abs(r) for r in row_sets])
    return np.flatnonzero(stacked.max(axis=0) > tol)
