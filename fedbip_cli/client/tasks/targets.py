"""Which modules LoRA adapts: the configured lora.target_modules, else the architecture's attention
projections, found by name.

Checked first: peft's table of target modules per model type (`bert` -> query/value, `llama` ->
q_proj/v_proj, `gpt2` -> c_attn, ...), but only if those names exist in the loaded model (names
change between transformers versions: ViT's query/value became q_proj/v_proj). Then the usual names
of attention projections, in this order. The first pair whose names all occur among the model's
linear layers wins.
"""

from __future__ import annotations

from torch import nn

from fedbip_cli.errors import UserError

ATTENTION_NAMES: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),          # Llama, Mistral, Qwen, OPT, transformers-5 ViT
    ("query", "value"),            # BERT, RoBERTa, DeiT, Swin
    ("q_lin", "v_lin"),            # DistilBERT
    ("c_attn",),                   # GPT-2 (fused qkv, Conv1D)
    ("query_key_value",),          # GPT-NeoX, Falcon, BLOOM
    ("qkv",),                      # timm-style ViTs
    ("Wqkv",),                     # MPT
    ("q", "v"),                    # T5
)


def linear_names(model: nn.Module) -> set[str]:
    """Last name component of every linear-like leaf (nn.Linear, GPT-2's Conv1D)."""
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(full.rsplit(".", 1)[-1])
    return names


def default_targets(model: nn.Module) -> list[str]:
    """The attention projections of `model` that LoRA adapts by default."""
    present = linear_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    candidates: list[tuple[str, ...]] = []
    try:
        # lazy: peft (seconds: it imports transformers)
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known,
        )

        if model_type in known:
            candidates.append(tuple(known[model_type]))
    except ImportError:  # older or newer peft without the table: the name list below still applies
        pass
    for names in candidates + list(ATTENTION_NAMES):
        if set(names) <= present:
            return list(names)
    raise UserError(f"lora.target_modules: no attention projections found in model type {model_type!r} "
                    f"(set lora.target_modules to some of: {', '.join(sorted(present)[:12])})")


def resolve_targets(model: nn.Module, configured: list[str] | None) -> list[str]:
    """`configured` if given (each must name a module, or end a module's dotted name, as in peft), else
    `default_targets(model)`."""
    if not configured:
        return default_targets(model)
    modules = [full for full, _ in model.named_modules()]
    missing = [n for n in configured if not any(m == n or m.endswith("." + n) for m in modules)]
    if missing:
        raise UserError(f"lora.target_modules: {', '.join(missing)} not found in the model "
                        f"(linear layers: {', '.join(sorted(linear_names(model))[:12])})")
    return list(configured)
