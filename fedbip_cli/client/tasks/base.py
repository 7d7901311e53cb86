"""The interface every task type implements, and the split container helpers they share.

A task is constructed from the workspace config; its `processor` (tokenizer or image processor) is
loaded on first use, so a coordinator-side or config-only caller pays nothing for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, LoraSettings


class Split(Protocol):
    """What the training loop and the TAP stages need of a task's data: length, tasks, per-task subsets."""

    tasks: list[str] | None

    def __len__(self) -> int: ...

    def task_names(self) -> list[str]: ...

    def for_task(self, task: str) -> "Split": ...


class Task(ABC):
    """One task type: base model, LoRA defaults, data, batches, loss and metrics."""

    name: str = ""
    uses_labels: bool = True
    """Classification tasks share a label map (labels.json) and train a head; causal-lm does not."""
    group_by_length: bool = True
    """Whether training batches group similar lengths (token sequences); images have none."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._processor: Any = None

    @property
    def placement(self):
        """Device, dtype and quantization of the base (model.device/dtype/quantization), resolved once."""
        if getattr(self, "_placement", None) is None:
            from fedbip_cli.client.loading import resolve_placement

            self._placement = resolve_placement(self.cfg.model)
        return self._placement

    @property
    def processor(self) -> Any:
        """The tokenizer or image processor, loaded once."""
        if self._processor is None:
            self._processor = self.load_processor()
        return self._processor

    @property
    def pad_id(self) -> int:
        """Token id used to pad batches (irrelevant for images)."""
        return getattr(self.processor, "pad_token_id", None) or 0

    @abstractmethod
    def load_processor(self) -> Any:
        """Tokenizer or image processor of cfg.model.path."""

    @abstractmethod
    def build_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        """The frozen pre-trained model (with a freshly initialised, seeded head for classification)."""

    def shared_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        """`build_base_model`, loaded once per task object: each call returns a fresh module tree over
        the same weight tensors, so clients of different LoRA ranks (one PEFT model each, as peft
        injects its layers in place) hold one copy of a 7B base between them, not one each."""
        import copy

        cache = self.__dict__.setdefault("_bases", {})
        key = (num_labels, head_seed)
        if key not in cache:
            cache[key] = self.build_base_model(num_labels, head_seed=head_seed)
        base = cache[key]
        shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}  # deepcopy returns these as they are
        return copy.deepcopy(base, shared)

    def head_modules(self, base: nn.Module) -> list[str] | None:
        """Dense modules trained in full and saved with the adapter (PEFT modules_to_save)."""
        return None

    def lora_config(self, lora: LoraSettings, base: nn.Module):
        """The peft LoraConfig: lora.target_modules, else the architecture's attention projections."""
        from peft import LoraConfig

        from fedbip_cli.client.tasks.targets import resolve_targets

        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=resolve_targets(base, lora.target_modules), use_rslora=lora.rslora,
                          modules_to_save=self.head_modules(base))

    def adapter_metadata(self, peft_model: nn.Module) -> dict[str, Any]:
        """adapter_config.json fields that let standard loaders find the base model and the PEFT class."""
        from fedbip_cli.core.files.adapter_meta import PEFT_TASK_TYPES
        from fedbip_cli.workspace.model_path import base_name

        return {"base_model_name_or_path": base_name(self.cfg),
                "task_type": PEFT_TASK_TYPES.get(self.name)}

    def read_labels(self, path: Path) -> list[str]:
        """The labels found in one data file or folder (for labels.json)."""
        raise UserError(f"task.type {self.name}: has no labels")

    @abstractmethod
    def load_split(self, path: Path, labels: list[str]) -> Split:
        """Read and prepare (tokenize) one client's split."""

    @abstractmethod
    def collate(self, data: Split, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """The batch of examples `idx`."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits) of a batch."""

    def distill_kl(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, torch.Tensor],
                   temperature: float) -> torch.Tensor:
        """TAP's T^2 * KL(softmax(teacher / T) || softmax(student / T)) of a batch's outputs, per example."""
        from fedbip_cli.client.train import distillation_kl

        return distillation_kl(student, teacher, temperature)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms `loss` averages over (examples here; response tokens for causal-lm), so that
        gradient accumulation weighs micro-batches exactly as one large batch would."""
        return int(next(iter(batch.values())).shape[0])

    @abstractmethod
    def evaluate(self, cm: Any, data: Split, pad_id: int) -> dict[str, float]:
        """Held-out metrics of the adapter loaded in `cm` (always with `loss` and `examples`)."""

    def predict_logits(self, cm: Any, data: Split, pad_id: int) -> torch.Tensor:
        """Per-example class logits (classification tasks; TAP's distillation needs them)."""
        raise UserError(f"task.type {self.name}: has no class logits (TAP distillation needs a classification task)")
