"""Opt-in DP: clipping bound, noise scale, and the zCDP accountant."""

from __future__ import annotations

import math

import numpy as np

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.site.privacy import privatize, spent, zcdp_epsilon


def test_accountant_composes_linearly_in_rho():
    one = spent(noise_multiplier=2.0, rounds=1, delta=1e-5)
    ten = spent(noise_multiplier=2.0, rounds=10, delta=1e-5)
    assert math.isclose(one.rho_per_round, 1 / 8)
    assert math.isclose(ten.epsilon_total, zcdp_epsilon(10 / 8, 1e-5))
    assert one.epsilon_round == one.epsilon_total < ten.epsilon_total
    assert math.isclose(one.epsilon_round, 0.125 + 2 * math.sqrt(0.125 * math.log(1e5)))


def test_privatize_clips_and_adds_noise_of_the_stated_scale(tmp_path):
    p = tmp_path / "tv.safetensors"
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(200, 100)).astype(np.float32), "b": rng.normal(size=(300,)).astype(np.float32)}
    safetensors_io.save(p, arrays, {"client": "x"})
    norm = privatize(p, clip_norm=1.0, noise_multiplier=1e-6, rng=np.random.default_rng(1))
    assert math.isclose(norm, math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays.values())), rel_tol=1e-5)
    out, meta = safetensors_io.load(p)
    assert meta == {"client": "x"}
    assert math.isclose(math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in out.values())), 1.0, rel_tol=1e-3)
    safetensors_io.save(p, {"z": np.zeros(100_000, np.float32)}, {})
    privatize(p, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(2))
    noise = safetensors_io.load(p)[0]["z"]
    assert abs(noise.std() - 1.0) < 0.01
