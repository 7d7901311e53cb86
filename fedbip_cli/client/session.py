"""One PEFT model held in memory, with adapters swapped in and out as files.

Loading the base model once and then only swapping the small adapter tensors lets `simulate` run
many clients and strategies in one process; the single-command CLI uses the same class once, and the
Flower ClientApp keeps one per process for all the sites it serves (`shared_client_model`).

The base lives at model.device / model.dtype / model.quantization (client/loading.py); the LoRA
factors and the head are float32 master weights whatever the base's dtype, so the adapters written
are the same files as from a float32 base.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

import torch
from safetensors.torch import load_file

from fedbip_cli.client.loading import base_folder
from fedbip_cli.client.lora_init import nested_init, peft_seeded_init
from fedbip_cli.client.precision import enable_gradient_checkpointing, keep_float32
from fedbip_cli.client.tasks import Task, make_task
from fedbip_cli.core.files.adapter import CONFIG_FILE, WEIGHTS_FILE, read_adapter
from fedbip_cli.core.files.adapter_meta import standard_config
from fedbip_cli.core.files.atomic import atomic_dir
from fedbip_cli.core.files.model_card import CardFacts, render_card
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config


class ClientModel:
    """The base model wrapped with a LoRA adapter; starts as the seeded shared initial adapter.

    The task (client/tasks/) builds the base model and says what LoRA adapts; `cfg.lora` is this
    client's LoRA settings (`Config.for_client`), so clients of one workspace may differ in rank.
    """

    def __init__(self, cfg: Config, num_labels: int, task: Task | None = None) -> None:
        # lazy: peft (seconds: it imports transformers)
        from peft import get_peft_model

        self.cfg = cfg
        self.num_labels = num_labels
        self.task = task or make_task(cfg)
        self.placement = self.task.placement
        base = self.task.shared_base_model(num_labels, head_seed=cfg.lora.init_seed)
        checkpointing = cfg.training.gradient_checkpointing
        if self.placement.quantization != "none":
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing,
                                                   gradient_checkpointing_kwargs={"use_reentrant": False})
        if checkpointing:
            enable_gradient_checkpointing(base)
        heads = self.task.head_modules(base) or []
        for name in heads:
            keep_float32(base.get_submodule(name))
        torch.manual_seed(cfg.lora.init_seed)
        self.model = get_peft_model(base, self.task.lora_config(cfg.lora, base), autocast_adapter_dtype=True)
        peft_seeded_init(self.model, cfg.lora.init_seed)  # float32 values, whatever the base's dtype
        if cfg.nested_init():
            nested_init(self.model, cfg.lora.init_seed)
        for name, p in self.model.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                raise AssertionError(f"trainable parameter {name} is {p.dtype}, not float32")
        if self.placement.quantization == "none":
            self.model.to(self.placement.device)  # the fresh head and LoRA factors join the base
        self.model.eval()
        self._initial = {k: v.detach().clone() for k, v in self.trainable_state().items()}

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def autocast(self) -> ContextManager:
        """Autocast in the model's dtype on a GPU (training and evaluation); nothing elsewhere."""
        dtype = self.placement.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        # lazy: peft (seconds: it imports transformers)
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def reset_to_initial(self) -> None:
        self.load_state(self._initial)

    def load_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        # lazy: peft (seconds: it imports transformers)
        from peft import set_peft_model_state_dict

        expected = self.trainable_state()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise UserError(f"{source}: does not match the configured model/LoRA settings "
                            f"(missing {missing[:2]}, unexpected {extra[:2]})")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise UserError(f"{source}: tensor {k!r} has shape {list(v.shape)}, the configured model needs "
                                f"{list(expected[k].shape)} (different LoRA rank or label count?)")
        set_peft_model_state_dict(self.model, {k: v.float() for k, v in state.items()})

    def load(self, folder: str | Path) -> None:
        """Load an adapter folder's tensors into the model (the folder must fit this config)."""
        adapter = read_adapter(folder)  # validates header, config: one clear error for bad files
        state = load_file(str(adapter.weights_path))
        for k, v in state.items():
            if not torch.isfinite(v).all():
                raise UserError(f"{adapter.weights_path}: tensor {k!r} holds NaN or Inf values")
        self.load_state(state, str(adapter.weights_path))

    def save(self, folder: str | Path, extra_files: dict[str, str] | None = None) -> None:
        """Write the current adapter as a PEFT folder with standard metadata and a model card (README.md;
        `extra_files` may give its own), plus any `extra_files`, atomically."""

        meta = self.task.adapter_metadata(self.model)
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(str(tmp))
            cfg_path = tmp / CONFIG_FILE
            doc = standard_config(json.loads(cfg_path.read_text()), meta)
            cfg_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            card = render_card(CardFacts(meta["base_model_name_or_path"], self.cfg.task.type, "adapter",
                                         pipeline_tag=self.task.spec.pipeline_tag))
            for name, text in ({"README.md": card} | (extra_files or {})).items():  # replaces peft's template
                (tmp / name).write_text(text, encoding="utf-8")
            assert (tmp / WEIGHTS_FILE).exists()

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


_SHARED: dict[str, ClientModel] = {}
"""Process-wide models by `model_key`: one base in memory for every site a Flower process serves."""


def model_key(cfg: Config, num_labels: int) -> str:
    """Everything the constructed model depends on (base, placement, task type, LoRA, head size), as text."""

    model = dict(vars(cfg.model), path=str(base_folder(cfg).resolve()))
    del model["max_length"]  # tokenization, not the model
    return json.dumps({"model": model, "task": cfg.task.type, "lora": vars(cfg.lora), "nested": cfg.nested_init(),
                       "checkpointing": cfg.training.gradient_checkpointing, "labels": num_labels},
                      sort_keys=True, default=str)


def shared_client_model(cfg: Config, num_labels: int, task: Task | None = None) -> ClientModel:
    """The process's ClientModel for this config, built on first use; reused by any workspace whose
    model, LoRA and head settings are the same (its `cfg` is set to the caller's, for `save`)."""
    key = model_key(cfg, num_labels)
    if key not in _SHARED:
        _SHARED[key] = ClientModel(cfg, num_labels, task)
    cm = _SHARED[key]
    cm.cfg = cfg
    return cm
