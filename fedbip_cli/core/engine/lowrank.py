"""Exact low-rank algebra for delta-space task vectors, in numpy (DESIGN §2, "Two spaces").

A LoRA module's weight change is handled as a sum of rank-r blocks ("atoms") L_j R_j, with L_j
(out x r_j) and R_j (r_j x in), stacked side by side as `left` (out x m) and on top of each other as
`right` (m x in), m = sum r_j. Nothing here ever forms an out x in matrix:

- inner products use the Gram identity <L1 R1, L2 R2>_F = sum((L1ᵀ L2) ⊙ (R1 R2ᵀ)), O(m²(out + in));
- a weighted sum sum_j c_j L_j R_j is brought back to rank r through one QR of `left` and one of
  `right`ᵀ (shared by every weighting of the same atoms) and an SVD of the small m x m core.

Everything is float64: a task vector is a difference of two nearby products, and its squared norm
from atom inner products is a difference of large numbers that float32 would cancel away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY_DIRECTION = 1e-3
"""Right-factor rows of unused directions are scaled as if their singular value were this fraction
of the largest one, so that B·A stays exact (their B column is zero) and training can still grow them."""


def lowrank_inner(u1: np.ndarray, v1: np.ndarray, u2: np.ndarray, v2: np.ndarray) -> float:
    """<U1 V1, U2 V2>_F without forming either product.

    >>> u, v = np.ones((3, 1)), np.ones((1, 2))
    >>> lowrank_inner(u, v, u, v)   # ||ones(3, 2)||² = 6
    6.0
    """
    u1, v1, u2, v2 = (np.asarray(x, dtype=np.float64) for x in (u1, v1, u2, v2))
    return float(np.sum((u1.T @ u2) * (v1 @ v2.T)))


def block_gram(left: np.ndarray, right: np.ndarray, sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    """J x J matrix of <L_i R_i, L_k R_k>_F for atoms stacked in `left` (out x m) and `right` (m x in).

    `sizes` are the atoms' ranks r_j (summing to m). Cost O(m²(out + in)).
    """
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    prod = (left.T @ left) * (right @ right.T)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    if prod.size == 0:
        return np.zeros((len(sizes), len(sizes)))
    return np.add.reduceat(np.add.reduceat(prod, starts, axis=0), starts, axis=1)


def expand(coeffs: np.ndarray, sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    """Per-atom coefficients (T x J) repeated over each atom's columns (T x m)."""
    return np.repeat(np.atleast_2d(np.asarray(coeffs, dtype=np.float64)), sizes, axis=1)


_WELL_CONDITIONED = 1e-8
"""R factors whose smallest diagonal entry is at least this fraction of the largest are inverted
(L R⁻¹ = Q); below it, Q is formed explicitly."""


@dataclass(frozen=True)
class OrthoBasis:
    """left = Q R with Q never formed when R is square and well conditioned: Q x = left (R⁻¹ x).

    Forming Q (LAPACK orgqr) costs as much as the QR itself; applying it through R⁻¹ costs one
    triangular solve of the small m x m factor. A rank-deficient `left` (e.g. two identical atoms)
    falls back to the explicit Q, which is stable there.
    """

    left: np.ndarray
    r: np.ndarray
    q: np.ndarray | None

    @classmethod
    def of(cls, left: np.ndarray) -> OrthoBasis:
        left = np.asarray(left, dtype=np.float64)
        r: np.ndarray = np.linalg.qr(left, mode="r")  # type: ignore[assignment]  # mode "r" returns R alone
        d = np.abs(np.diag(r))
        if r.shape[0] == r.shape[1] and d.size and d.min() > _WELL_CONDITIONED * d.max():
            return cls(left, r, None)
        q, r = np.linalg.qr(left)
        return cls(left, r, q)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Q @ x (x: ... x p x k, batched)."""
        if self.q is not None:
            return self.q @ x
        return self.left @ np.linalg.solve(self.r, x)

    @property
    def dim(self) -> int:
        return self.left.shape[0]


@dataclass(frozen=True)
class SharedBasis:
    """QR factors of a module's stacked atoms: left = Q_L R_L, rightᵀ = Q_R R_R.

    Computed once per module and shared by every client's weighting of the same atoms, so the
    per-client work is only the small core's SVD.
    """

    left: OrthoBasis
    right: OrthoBasis
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, left: np.ndarray, right: np.ndarray, sizes: tuple[int, ...] | list[int]) -> SharedBasis:
        return cls(OrthoBasis.of(left), OrthoBasis.of(np.asarray(right).T), tuple(int(s) for s in sizes))


@dataclass(frozen=True)
class Refactored:
    """Rank-r factors of T weighted sums: s · b[t] @ a[t] is target t's truncated sum.

    `sq_norm[t]` = ||exact||_F², `sq_error[t]` = ||exact - truncated||_F², both from the core's
    singular values (never from dense matrices).
    """

    b: np.ndarray
    a: np.ndarray
    sq_norm: np.ndarray
    sq_error: np.ndarray
    sq_update: np.ndarray | None = None
    """||exact - own start||_F² per target: the size of the round's update it applies (set by the
    delta engine, which knows each target's start)."""

    @property
    def relative_error(self) -> np.ndarray:
        """||exact - truncated||_F / ||exact||_F per target (0 for an all-zero sum)."""
        safe = np.where(self.sq_norm > 0, self.sq_norm, 1.0)
        return np.sqrt(np.clip(self.sq_error, 0.0, None) / safe)


def refactor(basis: SharedBasis, coeffs: np.ndarray, rank: int, scale: float) -> Refactored:
    """Best rank-`rank` factors (B, A) of sum_j coeffs[t, j] L_j R_j for every target t.

    Core_t = R_L diag(c_t) R_Rᵀ = X S Yᵀ (SVD), so the exact sum is (Q_L X) S (Q_R Y)ᵀ; keeping the top
    `rank` singular values is the best approximation in Frobenius norm (Eckart–Young), and the error
    is the norm of the dropped singular values.

    The split is balanced: B = Q_L X_r sqrt(S_r / s) and A = sqrt(S_r / s) (Q_R Y_r)ᵀ, so that
    s·B·A is the truncated sum and B and A carry the same singular values: neither factor is tiny
    while the other is huge, which keeps both well scaled for low-precision storage and for the next
    round's gradient steps. Directions with (near) zero singular value get a zero B column and a small
    non-zero A row, so the product is unchanged but those directions are not dead for training.
    """
    c = expand(coeffs, basis.sizes)
    cores = (basis.left.r[None, :, :] * c[:, None, :]) @ basis.right.r.T[None, :, :]
    x, s, yt = np.linalg.svd(cores, full_matrices=False)
    t, k = c.shape[0], s.shape[1]
    keep = min(rank, k)
    sq = s * s
    sq_norm = sq.sum(axis=1)
    sq_error = sq[:, keep:].sum(axis=1)
    sig = s[:, :keep]
    floor = _TINY_DIRECTION * s[:, :1]
    a_scale = np.sqrt(np.maximum(sig, floor) / scale)
    b_scale = np.divide(sig / scale, a_scale, out=np.zeros_like(sig), where=a_scale > 0)
    b = np.zeros((t, basis.left.dim, rank))
    a = np.zeros((t, rank, basis.right.dim))
    b[:, :, :keep] = _apply_stacked(basis.left, x[:, :, :keep] * b_scale[:, None, :])
    a_keep = _apply_stacked(basis.right, yt[:, :keep, :].transpose(0, 2, 1) * a_scale[:, None, :])
    a[:, :keep, :] = a_keep.transpose(0, 2, 1)
    return Refactored(b, a, sq_norm, sq_error)


def basis_gram(basis: SharedBasis) -> np.ndarray:
    """J x J inner products <L_i R_i, L_k R_k>_F of the basis's atoms, from its small R factors
    (LᵀL = R_Lᵀ R_L, R Rᵀ = R_Rᵀ R_R): O(m³), never touching the out x m or m x in stacks again."""
    gl = basis.left.r.T @ basis.left.r
    gr = basis.right.r.T @ basis.right.r
    starts = np.concatenate([[0], np.cumsum(basis.sizes)[:-1]]).astype(np.intp)
    return np.add.reduceat(np.add.reduceat(gl * gr, starts, axis=0), starts, axis=1)


def _apply_stacked(basis: OrthoBasis, x: np.ndarray) -> np.ndarray:
    """basis.Q @ x[t] for every t, as one matrix product (T x p x k -> T x dim x k)."""
    t, p, k = x.shape
    flat = x.transpose(1, 0, 2).reshape(p, t * k)
    return basis.apply(flat).reshape(basis.dim, t, k).transpose(1, 0, 2)


def combine_shared_right(lefts: np.ndarray, right: np.ndarray, coeffs: np.ndarray, scale: float) -> Refactored:
    """Exact rank-r result when every atom has the same right factor R (frozen A, FFA-LoRA).

    sum_j c_j L_j R = (sum_j c_j L_j) R, so B = sum_j c_j L_j / s and A = R: no truncation, and A stays
    byte-identical to the shared one, which keeps FFA-LoRA's frozen A frozen across rounds.
    `lefts` is J x out x r, `right` r x in, `coeffs` T x J.
    """
    lefts = np.asarray(lefts, dtype=np.float64)
    right = np.asarray(right)
    coeffs = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    b = np.einsum("tj,jor->tor", coeffs, lefts) / scale
    a = np.broadcast_to(right, (coeffs.shape[0],) + right.shape)
    r64 = right.astype(np.float64)
    gram_r = r64 @ r64.T
    sq_norm = np.einsum("tor,tos,rs->t", b, b, gram_r) * scale * scale
    return Refactored(b, a, sq_norm, np.zeros(coeffs.shape[0]))
