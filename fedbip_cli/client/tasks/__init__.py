"""Task types: what a client's model is and learns, one module per type behind `Task` (base.py).

The training loop (client/train.py), the adapter session (client/session.py) and the site steps
(steps/site.py, predict.py, export.py) are the same for every type; they ask the task for the base
model, the LoRA settings, the data of a split, batches, the loss of a batch, the metrics, predictions
and the export route. `make_task(cfg)` picks the type named by task.type in the registry
(workspace/task_types.py, one line per type) and imports only its module.
"""

from __future__ import annotations

import warnings
from importlib import import_module

from fedbip_cli.client.tasks.base import Task
from fedbip_cli.workspace.config import Config
from fedbip_cli.workspace.task_types import task_type

# peft asks every model whether it checkpoints activations; transformers 5 deprecates the old name
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def make_task(cfg: Config) -> Task:
    """The task object for cfg.task.type (its processor is loaded on first use)."""
    module, _, cls = task_type(cfg.task.type).implementation.partition(":")
    return getattr(import_module(module), cls)(cfg)


__all__ = ["Task", "make_task"]
