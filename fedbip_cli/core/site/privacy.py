"""Opt-in client-level differential privacy for task vectors: clip to norm C, add Gaussian noise sigma*C.

Applied at the site, before the task vector leaves it. The accountant is zero-concentrated DP
(Bun & Steinke 2016): one release of the Gaussian mechanism with noise multiplier sigma is
rho = 1 / (2 sigma^2)-zCDP; T releases compose to T*rho; (eps, delta)-DP follows from
eps = rho_T + 2 sqrt(rho_T ln(1/delta)). What it protects: any one site's contribution to what the
coordinator sees, across all rounds counted. The coordinator computes similarity on the noised
vectors, so noise also blurs who resembles whom.

The noise comes from the operating system's entropy (never from the config seed): noise that a
seed could regenerate could be subtracted again.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbip_cli.core.files import safetensors_io


@dataclass(frozen=True)
class PrivacySpent:
    rho_per_round: float
    rounds: int
    epsilon_round: float
    epsilon_total: float
    delta: float


def zcdp_epsilon(rho: float, delta: float) -> float:
    """(eps, delta)-DP implied by rho-zCDP."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def spent(noise_multiplier: float, rounds: int, delta: float) -> PrivacySpent:
    """Privacy cost of `rounds` Gaussian releases at this noise multiplier."""
    rho = 1.0 / (2.0 * noise_multiplier ** 2)
    return PrivacySpent(rho, rounds, zcdp_epsilon(rho, delta), zcdp_epsilon(rho * rounds, delta), delta)


def privatize(path: Path, clip_norm: float, noise_multiplier: float, rng: np.random.Generator | None = None) -> float:
    """Rewrite the task vector at `path` clipped to `clip_norm` plus N(0, (noise_multiplier*clip_norm)^2)
    noise on every element; keeps its metadata. Returns the norm before clipping."""
    header = safetensors_io.read_header(path)
    names = sorted(header.tensors)
    norm = math.sqrt(sum(float(np.square(safetensors_io.read_tensor(header, n), dtype=np.float64).sum()) for n in names))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    rng = rng or np.random.default_rng(secrets.randbits(128))
    sd = noise_multiplier * clip_norm
    layout = {n: ("F32", header.tensors[n].shape) for n in names}
    with safetensors_io.StreamWriter(path, layout, header.metadata) as w:
        for n in names:
            x = safetensors_io.read_tensor(header, n) * scale
            w.write(n, x + rng.normal(0.0, sd, size=x.shape).astype(np.float32))
    return norm
