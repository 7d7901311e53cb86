"""Opt-in site-level differential privacy for task vectors: clip the update to norm C, add Gaussian noise.

Applied at the site, before the task vector leaves it (docs/reliability.md states the guarantee).

The mechanism, in both spaces, runs on the update the site trained: u = the factor-space task vector
(LoRA A' - A, B' - B and dense tensors, concatenated). u is scaled to norm at most C and every element
gets independent N(0, (sigma*C)^2) noise: u~ = u * min(1, C/||u||) + noise.
- factor space: the released file is u~.
- delta space: the released file is the delta-space task vector of the noised adapter
  (A + u~_A, B + u~_B): U = [s(B + u~_B), -sB], V = [A + u~_A; A]. It is computed from u~ and the
  start adapter (which the coordinator sent, so it is public): post-processing, no further privacy
  cost, and the start halves stay byte for byte what the coordinator checks them against.
Clipping and noising the delta-space factors U, V themselves would be wrong twice over: their norm is
dominated by the start's A, and scaling U scales tau = UV by c^2 and changes the start halves.

Neighbouring relation: any two data sets of one site (the whole local data set may change). Clipping
bounds ||u(D) - u(D')|| <= 2C, so one release is rho = (2C)^2 / (2 (sigma C)^2) = 2 / sigma^2 zCDP
(Bun & Steinke 2016); releases compose by adding rho, and every release is counted, reruns included
(the site's ledger, `ledger_path`); (eps, delta) follows from eps = rho + 2 sqrt(rho ln(1/delta)).

Noise source: the operating system's CSPRNG (os.urandom: getrandom(2) on Linux), turned into normal
deviates by the Box-Muller transform in float64. numpy's Generator, even seeded from os.urandom, is
PCG64: fast but predictable from its output, so noise it drew could in principle be reconstructed and
subtracted. Known limit: floating-point sampling is not hardened against the attacks on the float
lattice of the noisy values (Mironov 2012); a discrete Gaussian would be.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fedbip_cli.core.files import safetensors_io

SENSITIVITY = 2.0
"""||u(D) - u(D')|| / C under the protected relation (any two data sets of one site)."""
_CHUNK = 1 << 20

Normal = Callable[[int], np.ndarray]


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


def release_rho(noise_multiplier: float) -> float:
    """zCDP cost of one release: sensitivity^2 / (2 sigma^2), sensitivity 2C, noise sigma*C."""
    return SENSITIVITY ** 2 / (2.0 * noise_multiplier ** 2)


def spent(noise_multiplier: float, rounds: int, delta: float) -> PrivacySpent:
    """Privacy cost of `rounds` releases at this noise multiplier."""
    rho = release_rho(noise_multiplier)
    return PrivacySpent(rho, rounds, zcdp_epsilon(rho, delta), zcdp_epsilon(rho * rounds, delta), delta)


def secure_normal(n: int) -> np.ndarray:
    """n independent N(0, 1) deviates (float64) from the OS CSPRNG, by Box-Muller."""
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, 2 * _CHUNK):
        m = min(2 * _CHUNK, n - start)
        pairs = (m + 1) // 2
        bits = np.frombuffer(os.urandom(16 * pairs), dtype="<u8").reshape(2, pairs)
        u1 = 1.0 - (bits[0] >> np.uint64(11)) * 2.0 ** -53  # (0, 1]: log never sees 0
        u2 = (bits[1] >> np.uint64(11)) * 2.0 ** -53
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
        out[start:start + m] = z[:m]
    return out


def _delta_modules(names: list[str]) -> list[str]:
    return sorted(n[: -len(".delta_U")] for n in names if n.endswith(".delta_U"))


def privatize(path: Path, clip_norm: float, noise_multiplier: float, *, scale_of: Callable[[str], float] | None = None,
              normal: Normal = secure_normal) -> float:
    """Rewrite the task vector at `path` as the DP release of its update (module docstring); keeps its
    metadata. `scale_of(module)`: the LoRA scale s of a module (needed for delta-space files).
    Returns the update's norm before clipping, for the site's own use: it must not leave the site."""
    header = safetensors_io.read_header(path)
    names = sorted(header.tensors)
    modules = _delta_modules(names)
    if modules and scale_of is None:
        raise ValueError("privatize: a delta-space task vector needs the LoRA scales (scale_of)")
    scale: Callable[[str], float] = scale_of or (lambda module: 1.0)  # only delta-space files read it
    read = lambda n: safetensors_io.read_tensor(header, n).astype(np.float64)  # noqa: E731

    def update(module: str) -> tuple[np.ndarray, np.ndarray]:
        """(B' - B, A' - A) of one module of a delta-space file."""
        u, v = read(f"{module}.delta_U"), read(f"{module}.delta_V")
        r = v.shape[0] // 2
        return (u[:, :r] + u[:, r:]) / scale(module), v[:r] - v[r:]

    dense = [n for n in names if not n.endswith((".delta_U", ".delta_V"))]
    squares = sum(float(np.square(read(n)).sum()) for n in dense)
    for m in modules:
        squares += sum(float(np.square(x).sum()) for x in update(m))
    norm = math.sqrt(squares)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    sd = noise_multiplier * clip_norm

    def noised(x: np.ndarray) -> np.ndarray:
        return x * factor + sd * normal(x.size).reshape(x.shape)

    layout = {n: ("F32", header.tensors[n].shape) for n in names}
    with safetensors_io.StreamWriter(path, layout, header.metadata) as w:
        done: dict[str, np.ndarray] = {}
        for n in names:
            if n in done:
                w.write(n, done.pop(n))
            elif n.endswith(".delta_U"):
                module = n[: -len(".delta_U")]
                d_b, d_a = update(module)
                u, v = read(n), read(f"{module}.delta_V")
                r = v.shape[0] // 2
                s = scale(module)
                noised_a = noised(d_a)  # A before B, the order a factor-space file draws them in
                u_out = np.concatenate([-u[:, r:] + s * noised(d_b), u[:, r:]], axis=1)  # s(B + u~_B), -sB
                v_out = np.concatenate([v[r:] + noised_a, v[r:]], axis=0)  # A + u~_A, A
                w.write(n, u_out.astype(np.float32))
                done[f"{module}.delta_V"] = v_out.astype(np.float32)
            else:
                w.write(n, noised(read(n)).astype(np.float32))
    return norm


def ledger_path(root: Path, client: str) -> Path:
    """The site's privacy ledger: one JSON line per release of `client` (reruns included)."""
    return Path(root) / "privacy" / f"{client}.jsonl"

