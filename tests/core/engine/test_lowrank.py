"""core.lowrank: the pure algebra of delta space, checked against dense matrices on small shapes."""

from __future__ import annotations

import numpy as np
import pytest

from fedbip_cli.core.engine.lowrank import (
    SharedBasis,
    block_gram,
    combine_shared_right,
    expand,
    lowrank_inner,
    refactor,
)


def atoms(rng, n, out, inn, r):
    return rng.standard_normal((n, out, r)), rng.standard_normal((n, r, inn))


def dense_sum(lefts, rights, c):
    return sum(cj * left @ r for cj, left, r in zip(c, lefts, rights))


def test_inner_product_matches_dense():
    rng = np.random.default_rng(0)
    u1, v1, u2, v2 = rng.standard_normal((7, 3)), rng.standard_normal((3, 5)), rng.standard_normal((7, 4)), \
        rng.standard_normal((4, 5))
    assert lowrank_inner(u1, v1, u2, v2) == pytest.approx(float(np.sum((u1 @ v1) * (u2 @ v2))), rel=1e-12)


def test_block_gram_matches_dense_gram_of_products():
    rng = np.random.default_rng(1)
    lefts, rights = atoms(rng, 4, 9, 6, 2)
    g = block_gram(np.concatenate(list(lefts), 1), np.concatenate(list(rights), 0), [2] * 4)
    flat = np.stack([(left @ r).ravel() for left, r in zip(lefts, rights)])
    np.testing.assert_allclose(g, flat @ flat.T, rtol=1e-12)


def test_refactor_is_exact_when_the_sum_has_rank_at_most_r():
    # 3 atoms of rank 2 in a 5 x 4 space, r = 4 = full rank: any weighted sum fits
    rng = np.random.default_rng(2)
    lefts, rights = atoms(rng, 3, 5, 4, 2)
    basis = SharedBasis.of(np.concatenate(list(lefts), 1), np.concatenate(list(rights), 0), [2, 2, 2])
    coeffs = rng.standard_normal((2, 3))
    res = refactor(basis, coeffs, rank=4, scale=0.5)
    for t in range(2):
        exact = dense_sum(lefts, rights, coeffs[t])
        np.testing.assert_allclose(0.5 * res.b[t] @ res.a[t], exact, atol=1e-12 * np.abs(exact).max())
        assert res.relative_error[t] < 1e-12
        assert res.sq_norm[t] == pytest.approx(np.sum(exact ** 2), rel=1e-10)


def test_reported_truncation_error_is_the_measured_one_and_optimal():
    rng = np.random.default_rng(3)
    lefts, rights = atoms(rng, 4, 12, 10, 3)
    basis = SharedBasis.of(np.concatenate(list(lefts), 1), np.concatenate(list(rights), 0), [3] * 4)
    coeffs = rng.random((3, 4))
    res = refactor(basis, coeffs, rank=3, scale=2.0)
    for t in range(3):
        exact = dense_sum(lefts, rights, coeffs[t])
        measured = np.linalg.norm(exact - 2.0 * res.b[t] @ res.a[t]) / np.linalg.norm(exact)
        s = np.linalg.svd(exact, compute_uv=False)
        best = np.sqrt(np.sum(s[3:] ** 2) / np.sum(s ** 2))  # Eckart-Young
        assert res.relative_error[t] == pytest.approx(measured, rel=1e-8)
        assert measured == pytest.approx(best, rel=1e-8)


def test_split_is_balanced_and_unused_directions_stay_alive():
    # two rank-2 atoms sharing their left factor: the sum l (r1 + r2) has rank 2, written at rank 4
    rng = np.random.default_rng(4)
    left, r1, r2 = rng.standard_normal((8, 2)), rng.standard_normal((2, 8)), rng.standard_normal((2, 8))
    basis = SharedBasis.of(np.hstack([left, left]), np.vstack([r1, r2]), [2, 2])
    res = refactor(basis, np.array([[1.0, 1.0]]), rank=4, scale=0.25)
    b, a = res.b[0], res.a[0]
    np.testing.assert_allclose(np.linalg.norm(b[:, :2], axis=0), np.linalg.norm(a[:2], axis=1), rtol=1e-10)
    np.testing.assert_allclose(0.25 * b @ a, left @ (r1 + r2), atol=1e-12)
    assert np.abs(b[:, 2:]).max() < 1e-12  # unused directions: no contribution ...
    assert np.linalg.norm(a[2:], axis=1).min() > 1e-3 * np.linalg.norm(a[0])  # ... but a live A row


def test_shared_right_factor_is_exact_and_keeps_a():
    rng = np.random.default_rng(5)
    lefts = rng.standard_normal((3, 6, 2))
    right = rng.standard_normal((2, 7)).astype(np.float32)
    coeffs = rng.standard_normal((2, 3))
    res = combine_shared_right(lefts, right, coeffs, scale=4.0)
    for t in range(2):
        exact = sum(c * left @ right for c, left in zip(coeffs[t], lefts))
        np.testing.assert_allclose(4.0 * res.b[t] @ res.a[t], exact, rtol=1e-10, atol=1e-12)
        assert res.a[t].tobytes() == right.tobytes()
        assert res.sq_norm[t] == pytest.approx(np.sum(exact ** 2), rel=1e-10)
    assert not res.relative_error.any()


def test_expand_repeats_coefficients_over_atom_columns():
    np.testing.assert_array_equal(expand([[1.0, 2.0]], [2, 1]), [[1.0, 1.0, 2.0]])


def test_rank_deficient_atoms_fall_back_to_explicit_q():
    # two identical atoms: the stacked left factor is rank-deficient, R is singular
    rng = np.random.default_rng(6)
    left, r = rng.standard_normal((9, 2)), rng.standard_normal((2, 7))
    basis = SharedBasis.of(np.hstack([left, left]), np.vstack([r, r]), [2, 2])
    assert basis.left.q is not None
    res = refactor(basis, np.array([[0.3, 0.7]]), rank=2, scale=1.0)
    np.testing.assert_allclose(res.b[0] @ res.a[0], left @ r, atol=1e-12)
    assert res.relative_error[0] < 1e-12
