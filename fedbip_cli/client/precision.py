"""Float32 master weights over a half-precision (or quantized) base: heads cast up, inputs cast to them.

The classification head is trained in full and aggregated like the LoRA factors, so it is kept in
float32 whatever the base's dtype; a forward pre-hook casts the base's bf16/fp16 features to the
head's dtype, so the head computes (and its logits come out) in float32 without autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedbip_cli.errors import UserError


def _cast_inputs(module: nn.Module, args: tuple) -> tuple:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def keep_float32(module: nn.Module) -> nn.Module:
    """Cast `module` to float32 and make it cast its floating inputs to its own dtype (idempotent)."""
    module.float()
    if not getattr(module, "_fedbip_float32", False):
        module.register_forward_pre_hook(_cast_inputs)
        setattr(module, "_fedbip_float32", True)  # noqa: B010 (nn.Module types attributes as tensors)
    return module


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Non-reentrant activation checkpointing of the transformers model inside `base`, with input
    gradients on so a frozen embedding does not cut the graph before the first LoRA layer."""
    hf: Any = next((m for m in base.modules() if hasattr(m, "gradient_checkpointing_enable")), None)
    if hf is None:
        raise UserError(f"training.gradient_checkpointing: {type(base).__name__} does not support it")
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf.enable_input_require_grads()


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that checkpoint themselves when in training mode (transformers' checkpointing layers)."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
