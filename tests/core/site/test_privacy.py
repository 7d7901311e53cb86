"""Opt-in DP: the mechanism on the update in both spaces, the noise source, and the zCDP accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import read_adapter
from fedbip_cli.core.files.taskvec import TaskVectorMeta, write_taskvec
from fedbip_cli.core.site.privacy import (
    privatize,
    release_rho,
    secure_normal,
    spent,
    zcdp_epsilon,
)
from fedbip_cli.testing.synthetic import Shape, make_round


def test_accountant_uses_sensitivity_two_c_and_composes_linearly_in_rho():
    one = spent(noise_multiplier=2.0, rounds=1, delta=1e-5)
    ten = spent(noise_multiplier=2.0, rounds=10, delta=1e-5)
    assert math.isclose(one.rho_per_round, (2 * 1.0) ** 2 / (2 * 2.0 ** 2)) and one.rho_per_round == release_rho(2.0)
    assert math.isclose(ten.epsilon_total, zcdp_epsilon(10 * 0.5, 1e-5))
    assert one.epsilon_round == one.epsilon_total < ten.epsilon_total
    assert math.isclose(one.epsilon_round, 0.5 + 2 * math.sqrt(0.5 * math.log(1e5)))


def test_secure_normal_is_standard_normal():
    z = secure_normal(200_001)
    assert z.shape == (200_001,) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert not np.array_equal(secure_normal(8), secure_normal(8))  # never a fixed seed


def seeded(seed: int):
    rng = np.random.default_rng(seed)
    return lambda n: rng.standard_normal(n)


def test_factor_space_clips_the_update_and_adds_noise_of_the_stated_scale(tmp_path):
    p = tmp_path / "tv.safetensors"
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(200, 100)).astype(np.float32), "b": rng.normal(size=(300,)).astype(np.float32)}
    safetensors_io.save(p, arrays, {"client": "x"})
    norm = privatize(p, clip_norm=1.0, noise_multiplier=1e-6, normal=seeded(1))
    assert math.isclose(norm, math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in arrays.values())),
                        rel_tol=1e-5)
    out, meta = safetensors_io.load(p)
    assert meta == {"client": "x"}
    assert math.isclose(math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in out.values())), 1.0,
                        rel_tol=1e-3)
    safetensors_io.save(p, {"z": np.zeros(100_000, np.float32)}, {})
    privatize(p, clip_norm=0.5, noise_multiplier=2.0)  # the secure source
    noise = safetensors_io.load(p)[0]["z"]
    assert abs(noise.std() - 1.0) < 0.01


@pytest.fixture
def rnd(tmp_path):
    return make_round(tmp_path / "ws", 2, Shape(layers=1, hidden=16, r=4, head=3), keep_trained=True,
                      shared_start=False, zero_b=False)


def taskvec_pair(rnd, tmp_path):
    """The same client's update written in factor and in delta space."""
    start, trained = read_adapter(rnd.files["start"][0].parent), read_adapter(rnd.files["trained"][0].parent)
    paths = {}
    for space in ("factor", "delta"):
        meta = TaskVectorMeta(rnd.clients[0], 0, space, "fp", "0" * 64, 10, start.lora_signature())
        paths[space] = tmp_path / f"{space}.safetensors"
        write_taskvec(start, trained, paths[space], meta)
    return start, paths


def test_delta_space_noises_the_update_and_leaves_the_start_halves(rnd, tmp_path):
    """Same noise draws in both spaces: the delta-space release is the delta of the factor-space release
    (post-processing), its start halves are untouched, and its pre-clip norm is the update's norm."""
    start, paths = taskvec_pair(rnd, tmp_path)
    before = safetensors_io.load(paths["delta"])[0]
    import shutil

    shutil.copy(paths["factor"], tmp_path / "probe.safetensors")
    clip = 0.5 * privatize(tmp_path / "probe.safetensors", clip_norm=1e9, noise_multiplier=1e-12, normal=seeded(0))
    norms = [privatize(paths[s], clip_norm=clip, noise_multiplier=0.3 / clip, normal=seeded(7), scale_of=start.scale)
             for s in paths]
    assert math.isclose(norms[0], 2 * clip, rel_tol=1e-9) and math.isclose(norms[1], 2 * clip, rel_tol=1e-5)
    factor, delta = safetensors_io.load(paths["factor"])[0], safetensors_io.load(paths["delta"])[0]
    for module in sorted(n[: -len(".delta_U")] for n in delta if n.endswith(".delta_U")):
        u, v, r = delta[f"{module}.delta_U"], delta[f"{module}.delta_V"], delta[f"{module}.delta_V"].shape[0] // 2
        np.testing.assert_array_equal(u[:, r:], before[f"{module}.delta_U"][:, r:])  # -sB untouched
        np.testing.assert_array_equal(v[r:], before[f"{module}.delta_V"][r:])  # A untouched
        s = start.scale(module)
        a0 = safetensors_io.read_tensor(start.header, f"{module}.lora_A.weight")
        b0 = safetensors_io.read_tensor(start.header, f"{module}.lora_B.weight")
        noised_a, noised_b = a0 + factor[f"{module}.lora_A.weight"], b0 + factor[f"{module}.lora_B.weight"]
        np.testing.assert_allclose(u @ v, s * (noised_b @ noised_a - b0 @ a0), rtol=1e-4, atol=1e-5)
    for name in factor:
        if name not in (n for n in factor if ".lora_" in n):
            np.testing.assert_allclose(delta[name], factor[name], rtol=1e-5, atol=1e-6)
