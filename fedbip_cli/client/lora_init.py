"""Nested initial LoRA A matrices: the rank-r initial A of a module is the first r rows of the
rank-R one for every R > r.

peft draws every A from torch's global generator in module order, so a client of rank 4 and one of
rank 8 start from unrelated A's even with the same seed. When clients choose different ranks, their
adapters are aggregated in a common rank (core/engine/mixed_ranks.py) where component j of one client meets
component j of another; nested A's make those the same direction at the start (and, with frozen A,
for ever), which is what makes factor-space aggregation across ranks meaningful, and exact with
`lora.freeze_a`.

Each module's rows come from its own generator, seeded from (init_seed, module name), with peft's
default distribution (kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedbip_cli.core.files.hashes import stable_seed


def nested_rows(seed: int, module: str, rank: int, in_features: int) -> torch.Tensor:
    """The first `rank` rows of `module`'s nested initial A (rank x in_features, float32)."""

    gen = torch.Generator().manual_seed(stable_seed(seed, "lora_A", module))
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand((rank, in_features), generator=gen, dtype=torch.float32) * 2 - 1) * bound


@torch.no_grad()
def nested_init(model: nn.Module, seed: int, adapter: str = "default") -> int:
    """Overwrite every LoRA A of `model` with its nested rows; returns how many were set."""
    count = 0
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            weight: torch.Tensor = lora_a[adapter].weight  # type: ignore[assignment]  # nn.Linear's
            weight.copy_(nested_rows(seed, name, *weight.shape).to(weight.dtype))
            count += 1
    return count


@torch.no_grad()
def peft_seeded_init(model: nn.Module, seed: int, adapter: str = "default") -> int:
    """Redo peft's default LoRA init (seeded) in float32 on the CPU; returns how many modules were set.

    peft draws A in float32 on the CPU and then casts it to the base layer's dtype and device, so over a
    bf16 base the initial A is rounded to bf16 before being cast back up: a site on a bf16 GPU and one
    on a float32 CPU would start from different bytes. This replays peft's draws from the same seed in
    the same order (per module: nn.Linear(in, r) and nn.Linear(r, out) constructors, then kaiming on A)
    and writes them unrounded; on a float32 base it reproduces peft's own values exactly (a test checks).
    """
    torch.manual_seed(seed)
    count = 0
    for _, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not (isinstance(lora_a, nn.ModuleDict) and adapter in lora_a and isinstance(lora_b, nn.ModuleDict)):
            continue
        # the factors' weights (torch types a submodule's attribute as Tensor | Module)
        a: torch.Tensor = lora_a[adapter].weight  # type: ignore[assignment]
        b: torch.Tensor = lora_b[adapter].weight  # type: ignore[assignment]
        draws = [torch.empty(a.shape), torch.empty(b.shape), torch.empty(a.shape)]
        for w in draws:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        a.copy_(draws[2].to(a.dtype))
        b.zero_()
        count += 1
    return count
