"""Plain in-memory reference implementations the tests compare the streaming engine against.

numpy only (the core tier imports this): whole stacks held in memory, float64, the formulas as
written in DESIGN §2, no clever reuse.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from fedbip_cli.core.files.adapter import module_of
from fedbip_cli.core.strategies.base import Mixing
from fedbip_cli.core.strategies.similarity import add_gram


def accumulate_grams(names: Iterable[str], load: Callable[[str], np.ndarray],
                     group_of: Callable[[str], str] = module_of) -> dict[str, np.ndarray]:
    """Gram matrices per group and overall (key GLOBAL), from in-memory stacks.

    `load(name)` returns the K x ... stack of that tensor across clients; it is called once per name.
    """
    grams: dict[str, np.ndarray] = {}
    for name in names:
        x = load(name)
        x = x.reshape(x.shape[0], -1)
        add_gram(grams, group_of(name), x @ x.T)
    return grams


def mix_tensor(mixing: Mixing, module: str, starts: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Factor-space mixing of one tensor held in memory (K x shape starts and task vectors), in
    float64: the plain formula the streaming engine (`produce_outputs`) computes."""
    w = mixing.for_module(module).astype(np.float64)
    k = taus.shape[0]
    flat_t = taus.reshape(k, -1).astype(np.float64)
    if mixing.mode == "update":
        out = starts.reshape(k, -1) + w @ flat_t
    else:
        out = w @ (starts.reshape(k, -1).astype(np.float64) + flat_t)
    return out.reshape(taus.shape).astype(np.float32)
