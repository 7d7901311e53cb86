"""task.type text-classification: an encoder with pooling and a linear head (model.py) on
JSONL/CSV rows of text and label (data.py), tokenized once and batched by length
(batching.py), scored by accuracy, macro-F1 and cross-entropy (metrics.py); exported as a
sentence-transformers model when it pools by mean (steps/export.py).

This module only routes the Task interface to those files, which keep the behaviour they had before
task types existed: same model construction, same LoRA config, same batches, same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fedbip_cli.client.metrics import classification_rows
from fedbip_cli.client.tasks.base import Task
from fedbip_cli.client.tasks.targets import resolve_targets
from fedbip_cli.client.tasks.text.batching import Encoded, collate, encode_texts
from fedbip_cli.client.tasks.text.data import encode, read_examples
from fedbip_cli.client.tasks.text.metrics import evaluate, predict_logits
from fedbip_cli.client.tasks.text.model import (
    anchored_targets,
    build_base_model,
    head_modules,
    load_tokenizer,
    logits_of,
    lora_config,
)
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import LoraSettings

if TYPE_CHECKING:  # the session imports the tasks
    from peft import PeftModel

    from fedbip_cli.client.session import ClientModel


class TextClassification(Task[Encoded]):
    export_auto_class = "AutoModelForSequenceClassification"

    def load_processor(self) -> Any:
        return load_tokenizer(self.cfg)

    def build_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        return build_base_model(self.cfg, num_labels, head_seed=head_seed)

    def head_modules(self, base: nn.Module) -> list[str]:
        return ["classifier"]

    def lora_config(self, lora: LoraSettings, base: nn.Module) -> Any:
        return lora_config(lora, resolve_targets(base, lora.target_modules), head_modules(base))

    def adapter_metadata(self, peft_model: PeftModel) -> dict[str, Any]:
        """Standard fields; for mean pooling also target_modules anchored to fedbip's own layout, so that a
        standard class (which cannot pool by mean) fails to load the adapter loudly instead of partially."""

        doc = super().adapter_metadata(peft_model)
        if self.cfg.model.pooling == "mean":
            doc["target_modules"] = anchored_targets(peft_model)
        return doc

    def read_labels(self, path: Path) -> list[str]:
        task = self.cfg.task
        return [e.label for e in read_examples(path, task.text_field, task.label_field)]

    def load_split(self, path: Path, labels: list[str]) -> Encoded:
        task = self.cfg.task
        examples = read_examples(path, task.text_field, task.label_field, task.task_field)
        indices = encode(examples, labels, path)
        tasks = [e.task or "default" for e in examples] if task.task_field else None  # (read_examples sets each)
        return encode_texts(self.processor, [e.text for e in examples], indices, self.cfg.model.max_length, tasks)

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(data, idx, pad_id)

    def example_lengths(self, data: Encoded) -> list[int]:
        return [len(ids) for ids in data.input_ids]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        return F.cross_entropy(logits, batch["labels"]), logits

    def evaluate(self, cm: ClientModel, data: Encoded, pad_id: int) -> dict[str, Any]:
        return evaluate(cm, data, pad_id)

    def predict_logits(self, cm: ClientModel, data: Encoded, pad_id: int) -> torch.Tensor:
        return predict_logits(cm, data, pad_id)

    def predict_item(self, path: Path, line: int, row: dict[str, Any]) -> str:
        """The row's text (task.text_field), a non-empty string."""
        field = self.cfg.task.text_field
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}:{line}: field {field!r} must be a non-empty string")
        return value

    def predict(self, cm: ClientModel, items: list[str], labels: list[str]) -> list[dict[str, Any]]:
        """The label and every label's probability of each text, as one batch."""
        data = encode_texts(self.processor, items, [0] * len(items), self.cfg.model.max_length)
        batch = cm.to_device(collate(data, list(range(len(items))), self.pad_id))
        logits = logits_of(cm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        return classification_rows(logits.float(), labels)

    def export_route(self) -> str:
        """No transformers class pools by mean: such a model goes out as a sentence-transformers folder."""
        return "sentence-transformers" if self.cfg.model.pooling == "mean" else "transformers"
