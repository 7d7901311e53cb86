"""Task types: what a client's model is and learns, one module per type behind `Task` (base.py).

The training loop (client/train.py), the adapter session (client/session.py) and the site steps
(steps/site.py) are the same for every type; they ask the task for the base model, the LoRA settings, the
data of a split, batches, the loss of a batch and the metrics. `make_task(cfg)` picks the type named
by task.type and imports only its module.
"""

from __future__ import annotations

import warnings
from importlib import import_module

from fedbip_cli.client.tasks.base import Task
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config

# peft asks every model whether it checkpoints activations; transformers 5 deprecates the old name
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

TASK_TYPES: dict[str, tuple[str, str]] = {
    "text-classification": ("text.task", "TextClassification"),
    "causal-lm": ("causal_lm.task", "CausalLM"),
    "image-classification": ("image.task", "ImageClassification"),
}


def make_task(cfg: Config) -> Task:
    """The task object for cfg.task.type (its processor is loaded on first use)."""
    if cfg.task.type not in TASK_TYPES:
        raise UserError(f"task.type: unknown task type {cfg.task.type!r} (choose one of {', '.join(TASK_TYPES)})")
    module, cls = TASK_TYPES[cfg.task.type]
    return getattr(import_module(f"{__name__}.{module}"), cls)(cfg)


__all__ = ["TASK_TYPES", "Task", "make_task"]
