"""A fourth task type, written outside fedbip_cli to show that one module is all a new type needs:
text regression (a number per text), on any encoder: mean-pooled token states and a one-output head,
trained by mean squared error and scored by mean absolute error.

tests/steps/test_task_interface.py registers it with one registry line and runs it through the real
site and coordinator steps. Rows are JSONL {"text": ..., "target": number}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fedbip_cli.client.readers import jsonl_rows
from fedbip_cli.client.splits import PerTask
from fedbip_cli.client.tasks.base import Task
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.model_path import resolve_model_path

if TYPE_CHECKING:
    from fedbip_cli.client.session import ClientModel

TYPE_NAME = "text-regression"
TARGET_FIELD = "target"


@dataclass
class Scored(PerTask):
    """Token ids and targets of one split."""

    input_ids: list[list[int]]
    targets: list[float]
    tasks: list[str] | None = None

    def __len__(self) -> int:
        return len(self.targets)


class Regressor(nn.Module):
    """Encoder, mean pooling over real tokens, one linear output."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # peft and fedbip's target lookup read the model type here
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float()).squeeze(-1)


class TextRegression(Task):
    export_auto_class = "AutoModel"

    def load_processor(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model_path(self.cfg.model.path))

    def build_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        from transformers import AutoModel

        from fedbip_cli.client.loading import load_pretrained

        encoder = load_pretrained(AutoModel, resolve_model_path(self.cfg.model.path), self.placement, "an encoder")
        if head_seed is not None:
            torch.manual_seed(head_seed)
        return Regressor(encoder)

    def head_modules(self, base: nn.Module) -> list[str]:
        return ["head"]

    def load_split(self, path: Path, labels: list[str]) -> Scored:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: data file not found")
        texts, targets = [], []
        for line, row in jsonl_rows(path):
            texts.append(self.predict_item(path, line, row))
            value = row.get(TARGET_FIELD)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{path}:{line}: field {TARGET_FIELD!r} must be a finite number")
            targets.append(float(value))
        if not texts:
            raise UserError(f"{path}: data file holds no examples")
        ids = self.processor(texts, truncation=True, max_length=self.cfg.model.max_length)["input_ids"]
        return Scored([list(x) for x in ids], targets)

    def collate(self, data: Scored, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        longest = max(len(data.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = data.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "targets": torch.tensor([data.targets[i] for i in idx])}

    def example_lengths(self, data: Scored) -> list[int]:
        return [len(ids) for ids in data.input_ids]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.mse_loss(predicted.float(), batch["targets"].float()), predicted

    @torch.inference_mode()
    def evaluate(self, cm: ClientModel, data: Scored, pad_id: int) -> dict[str, Any]:
        cm.model.eval()
        errors = []
        for s in range(0, len(data), 32):
            batch = cm.to_device(self.collate(data, list(range(s, min(s + 32, len(data)))), pad_id))
            predicted = cm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            errors.append((predicted.float() - batch["targets"].float()).cpu())
        e = torch.cat(errors)
        return {"mae": float(e.abs().mean()), "loss": float((e ** 2).mean()), "examples": len(data)}

    def predict_item(self, path: Path, line: int, row: dict[str, Any]) -> str:
        value = row.get("text")
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}:{line}: field 'text' must be a non-empty string")
        return value

    def predict(self, cm: ClientModel, items: list[str], labels: list[str]) -> list[dict[str, Any]]:
        data = Scored([list(x) for x in self.processor(items, truncation=True,
                                                        max_length=self.cfg.model.max_length)["input_ids"]],
                      [0.0] * len(items))
        batch = cm.to_device(self.collate(data, list(range(len(items))), self.pad_id))
        predicted = cm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return [{"value": round(float(v), 6)} for v in predicted.float().cpu()]
