"""The model a client trains: a frozen pre-trained encoder, a pooling rule, a linear head, LoRA on top.

`build_base_model` is the one construction every adapter fedbip writes is saved from and loads into
(`PeftModel.from_pretrained(build_base_model(...), folder)`). Sentence-transformers checkpoints such
as all-MiniLM-L6-v2 are meant to be read through mean pooling, so pooling is a setting ("mean" by
default; "cls" takes the first token's state) rather than the [CLS] pooler that
AutoModelForSequenceClassification would use.
"""

from __future__ import annotations

import torch
from torch import nn

from fedbip_cli.client.loading import quiet_transformers
from fedbip_cli.workspace.config import Config, LoraSettings
from fedbip_cli.workspace.model_path import resolve_model_path


class SequenceClassifier(nn.Module):
    """Encoder + pooling + linear head. Forward returns logits."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.pooling = pooling
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(pooled.float())  # the head is float32 whatever the encoder's dtype


def build_base_model(cfg: Config, num_labels: int, head_seed: int | None = None) -> SequenceClassifier:
    """The frozen base model with a freshly initialised head (seeded when `head_seed` is given)."""
    from fedbip_cli.client.loading import load_pretrained, resolve_placement

    quiet_transformers()
    from transformers import AutoModel

    placement = resolve_placement(cfg.model)
    encoder = load_pretrained(AutoModel, resolve_model_path(cfg.model.path), placement, "a model")
    if head_seed is not None:
        torch.manual_seed(head_seed)
    model = SequenceClassifier(encoder, num_labels, cfg.model.pooling)  # float32 head, drawn on the CPU
    if placement.quantization == "none":
        model.classifier.to(placement.device)
    else:  # a quantized encoder stays where bitsandbytes put it; the head joins it
        model.classifier.to(next(encoder.parameters()).device)
    model.eval()
    return model


def load_tokenizer(cfg: Config):
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.path))


def lora_config(lora: LoraSettings):
    """The peft LoraConfig for these settings (head trained in full as modules_to_save)."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), use_rslora=lora.rslora,
                      modules_to_save=["classifier"])
