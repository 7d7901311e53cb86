"""The interface every task type implements, and the split container helpers they share.

A task is constructed from the workspace config; its `processor` (tokenizer or image processor) is
loaded on first use, so a config-only caller pays nothing for it. Its light facts (PEFT task type,
labels, metric names, headline metric) live in the registry, workspace/task_types.py, where callers
without torch (the coordinator, the config) read them; `spec` is this task's entry there.

Everything the shared code asks of a task type is a method here: the training loop (client/train.py),
the adapter session (client/session.py), the site steps (steps/site.py), `fedbip predict`
(steps/predict.py) and `fedbip export` (steps/export.py) do not look at task.type.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, Sequence, TypeVar

import torch
from torch import nn

from fedbip_cli.client.loading import resolve_placement
from fedbip_cli.client.losses import distillation_kl
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, LoraSettings
from fedbip_cli.workspace.model_path import base_name
from fedbip_cli.workspace.task_types import EXPORT_ROUTES, TaskType, task_type

if TYPE_CHECKING:  # the session imports the tasks to build its model: a runtime import would be a circle
    from peft import PeftModel

    from fedbip_cli.client.loading import Placement
    from fedbip_cli.client.session import ClientModel

ROW_FORMATS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
"""The line-based input files `fedbip predict` reads (client/readers.py), by suffix."""


class Split(Protocol):
    """What the training loop and the TAP stages need of a task's data: length, tasks, per-task subsets."""

    tasks: list[str] | None

    def __len__(self) -> int: ...

    def task_names(self) -> list[str]: ...

    def for_task(self, task: str) -> "Split": ...


SplitT = TypeVar("SplitT", bound=Split)
"""A task type's split class (Encoded, LMData, ImageData): what its `load_split` returns and its methods take."""


class Task(ABC, Generic[SplitT]):
    """One task type: base model, LoRA defaults, data, batches, loss, metrics, predictions and export."""

    predict_formats: tuple[str, ...] = ROW_FORMATS
    """Input file suffixes `fedbip predict` accepts for this type (besides what `predict_file` reads)."""
    export_auto_class: str = "AutoModel"
    """The transformers class an exported adapter's base loads with (`load_code`)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._processor: Any = None

    @property
    def name(self) -> str:
        """The task type's name (task.type)."""
        return self.cfg.task.type

    @property
    def spec(self) -> TaskType:
        """This type's light facts in the registry (workspace/task_types.py)."""
        return task_type(self.name)

    @property
    def uses_labels(self) -> bool:
        """Classification tasks share a label map (labels.json) and train a head; causal-lm does not."""
        return self.spec.uses_labels

    @property
    def placement(self) -> Placement:
        """Device, dtype and quantization of the base (model.device/dtype/quantization), resolved once."""
        if getattr(self, "_placement", None) is None:
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

    def lora_config(self, lora: LoraSettings, base: nn.Module) -> Any:
        """The peft LoraConfig: lora.target_modules, else the architecture's attention projections."""
        # lazy: peft (seconds); tasks/targets.py imports this module (a circle)
        from peft import LoraConfig

        from fedbip_cli.client.tasks.targets import resolve_targets

        # peft annotates lora_alpha as int; it takes any number (the scale is alpha / r)
        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,  # type: ignore[arg-type]
                          target_modules=resolve_targets(base, lora.target_modules), use_rslora=lora.rslora,
                          modules_to_save=self.head_modules(base))

    def adapter_metadata(self, peft_model: PeftModel) -> dict[str, Any]:
        """adapter_config.json fields that let standard loaders find the base model and the PEFT class."""

        return {"base_model_name_or_path": base_name(self.cfg), "task_type": self.spec.peft_task_type}

    def read_labels(self, path: Path) -> list[str]:
        """The labels found in one data file or folder (for labels.json)."""
        raise UserError(f"task.type {self.name}: has no labels")

    @abstractmethod
    def load_split(self, path: Path, labels: list[str]) -> SplitT:
        """Read and prepare (tokenize) one client's split."""

    @abstractmethod
    def collate(self, data: SplitT, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """The batch of examples `idx`."""

    def example_lengths(self, data: SplitT) -> Sequence[int] | None:
        """Each example's length (tokens), by which training batches are grouped (client/batching.py);
        None: no grouping (the default; images have no length)."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits) of a batch."""

    def distill_kl(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, torch.Tensor],
                   temperature: float) -> torch.Tensor:
        """TAP's T^2 * KL(softmax(teacher / T) || softmax(student / T)) of a batch's outputs, per example."""
        return distillation_kl(student, teacher, temperature)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms `loss` averages over (examples here; response tokens for causal-lm), so that
        gradient accumulation weighs micro-batches exactly as one large batch would."""
        return int(next(iter(batch.values())).shape[0])

    @abstractmethod
    def evaluate(self, cm: ClientModel, data: SplitT, pad_id: int) -> dict[str, Any]:
        """Held-out metrics of the adapter loaded in `cm`: every name of `spec.metrics`, and `examples`."""

    def predict_logits(self, cm: ClientModel, data: SplitT, pad_id: int) -> torch.Tensor:
        """Per-example class logits (classification tasks; TAP's distillation needs them)."""
        raise UserError(f"task.type {self.name}: has no class logits (TAP distillation needs a classification task)")

    def predict_file(self, path: Path) -> list[Any] | None:
        """The items of a `fedbip predict` input that is not line-based (image-classification: an .npz),
        one per row, rows numbered from 0; None (the default) where `path` is to be read row by row."""
        return None

    def predict_item(self, path: Path, line: int, row: dict[str, Any]) -> Any:
        """One row of a `fedbip predict` input (line `line` of `path`), checked: what `predict` takes.
        Raises UserError naming `path:line` and the field when the row is unusable."""
        raise UserError(f"task.type {self.name}: `fedbip predict` is not available for this task type")

    def predict(self, cm: ClientModel, items: list[Any], labels: list[str]) -> list[dict[str, Any]]:
        """One JSON-ready result per item (`predict_item`'s), from the adapter loaded in `cm` (in eval
        mode, under inference mode): classification {"label", "probabilities"}, causal-lm {"generation"}.
        `labels` is the label map (empty where the type uses none)."""
        raise UserError(f"task.type {self.name}: `fedbip predict` is not available for this task type")

    def export_route(self) -> str:
        """How `fedbip export` writes this task's adapter: one of EXPORT_ROUTES (default: transformers)."""
        return EXPORT_ROUTES[0]

    def export_base_arguments(self, num_labels: int) -> str:
        """Keyword arguments, as Python source, of the base's from_pretrained in `load_code`."""
        return f", num_labels={num_labels}" if self.uses_labels else ""

    def load_code(self, merge: bool, base: str, num_labels: int) -> list[str]:
        """Lines of Python that load an exported folder ("DIR") in the standard stack (transformers route):
        the merged model, or base model `base` with the PEFT adapter."""
        auto = self.export_auto_class
        if merge:
            return [f"from transformers import {auto}", f'model = {auto}.from_pretrained("DIR")']
        return [f"from transformers import {auto}", "from peft import PeftModel",
                f'base = {auto}.from_pretrained("{base}"{self.export_base_arguments(num_labels)})',
                'model = PeftModel.from_pretrained(base, "DIR")']
