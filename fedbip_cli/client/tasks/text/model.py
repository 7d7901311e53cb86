"""The model a client trains: a frozen pre-trained encoder, a pooling rule, a linear head, LoRA on top.

`build_base_model` is the one construction every adapter fedbip writes is saved from and loads into
(`PeftModel.from_pretrained(build_base_model(...), folder)`). Sentence-transformers checkpoints such
as all-MiniLM-L6-v2 are meant to be read through mean pooling, so pooling is a setting: "mean" (the
default) is fedbip's `SequenceClassifier`, which standard stacks read as a sentence-transformers
model plus a linear head (docs/deploy.md); "cls" is `AutoModelForSequenceClassification` itself (the
architecture's own [CLS] pooler and head), so its adapters load there with peft unchanged.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from fedbip_cli.client import loading
from fedbip_cli.client.loading import base_folder, quiet_transformers, resolve_placement
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, LoraSettings

if TYPE_CHECKING:  # peft costs ~1 s to import: only for the annotations
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel


class SequenceClassifier(nn.Module):
    """Encoder + pooling + linear head. Forward returns logits."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.pooling = pooling
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(pooled.float())  # the head is float32 whatever the encoder's dtype


def logits_of(output: object) -> torch.Tensor:
    """The logits of either model: SequenceClassifier returns them, transformers wraps them in an output."""
    return output.logits if hasattr(output, "logits") else output  # type: ignore[return-value]


def build_base_model(cfg: Config, num_labels: int, head_seed: int | None = None) -> nn.Module:
    """The frozen base model with a freshly initialised head (seeded when `head_seed` is given)."""

    quiet_transformers()
    # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
    from transformers import AutoModel, AutoModelForSequenceClassification

    placement = resolve_placement(cfg.model)
    path = base_folder(cfg)
    if cfg.model.pooling == "cls":
        model, info = loading.load_pretrained(AutoModelForSequenceClassification, path, placement, "a model",
                                              num_labels=num_labels, output_loading_info=True)
    else:
        encoder = loading.load_pretrained(AutoModel, path, placement, "a model")
    if head_seed is not None:
        torch.manual_seed(head_seed)
    if cfg.model.pooling == "cls":
        # every module the checkpoint did not hold (the head; a pooler some checkpoints lack) is made
        # the same at every site and trained and saved in full, so the adapter alone restores it;
        # like every head, it is float32 whatever the encoder's dtype
        fresh = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]} | {_head_name(model)})
        for name in fresh:
            module = model.get_submodule(name)
            module.to(torch.float32)
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    sub.reset_parameters()
        model.fedbip_head_modules = fresh
        return model
    model = SequenceClassifier(encoder, num_labels, cfg.model.pooling)  # float32 head, drawn on the CPU
    if placement.quantization == "none":
        model.classifier.to(placement.device)
    else:  # a quantized encoder stays where bitsandbytes put it; the head joins it
        model.classifier.to(next(encoder.parameters()).device)
    model.eval()
    return model


def _head_name(model: nn.Module) -> str:
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise UserError(f"model.path: {type(model).__name__} has no classification head named classifier or score")


def head_modules(base: nn.Module) -> list[str]:
    """Dense modules trained in full and saved with the adapter (peft modules_to_save)."""
    return list(getattr(base, "fedbip_head_modules", None) or ["classifier"])


def anchored_targets(peft_model: PeftModel) -> str:
    """target_modules as a regex that matches only SequenceClassifier's own module names
    (`encoder.<encoder's first level>....<target>`): a standard class that holds the encoder under
    another name finds no target and peft refuses to load, instead of loading half of the adapter."""

    config = cast("LoraConfig", next(iter(peft_model.peft_config.values())))  # fedbip makes LoRA adapters only
    if isinstance(config.target_modules, str):  # a regex already
        return config.target_modules
    targets = sorted(config.target_modules or ())
    base = peft_model.get_base_model()
    if not isinstance(base, SequenceClassifier):  # mean pooling: the base is fedbip's own class
        raise TypeError(f"anchored_targets: needs a SequenceClassifier base, got {type(base).__name__}")
    encoder = base.encoder
    firsts = sorted({name.split(".")[0] for name, _ in encoder.named_modules()
                     if name and name.rsplit(".", 1)[-1] in targets})
    alt = "|".join(re.escape(t) for t in targets)
    return rf"encoder\.(?:{'|'.join(map(re.escape, firsts))})\.(?:.*\.)?(?:{alt})"


def load_tokenizer(cfg: Config):
    quiet_transformers()
    # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_folder(cfg))


def lora_config(lora: LoraSettings, targets: list[str], modules_to_save: list[str] | None = None) -> LoraConfig:
    """The peft LoraConfig for these settings on the modules `targets` (head trained in full as modules_to_save)."""
    # lazy: peft (seconds: it imports transformers)
    from peft import LoraConfig

    # peft annotates lora_alpha as int; it takes any number (the scale is alpha / r)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,  # type: ignore[arg-type]
                      target_modules=list(targets), use_rslora=lora.rslora,
                      modules_to_save=modules_to_save or ["classifier"])
