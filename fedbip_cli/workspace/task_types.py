"""The task types fedbip knows, and the light facts about each that callers without torch need.

One line per type. The coordinator (which never imports torch), the config's validation, the model
cards, the Flower records and the simulation tables read these facts here; the site side builds the
type's `Task` (client/tasks/) from `implementation`, imported only when a site needs it. A new task
type is one module implementing `Task` plus one line in `TASK_TYPES` (docs/tasks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedbip_cli.errors import UserError


@dataclass(frozen=True)
class TaskType:
    """What the rest of fedbip needs to know about a task type without loading it."""

    implementation: str
    """`module:Class` of its `Task` (fedbip_cli.client.tasks.base.Task), imported by `make_task`."""
    peft_task_type: str | None
    """peft's `task_type` written into adapter_config.json (None: peft has none for it; PeftModel loads it)."""
    uses_labels: bool
    """Whether it classifies into the federation's label map (labels.json) with a trained head."""
    metrics: tuple[str, ...]
    """The scores each evaluation reports (keys of `fedbip eval`'s record), for simulate's tables and Flower."""
    headline: str
    """The one of `metrics` that tables and plots lead with."""
    pipeline_tag: str | None = None
    """The hub's pipeline tag on model cards (None: the card names none)."""
    packaged_model: bool = True
    """Whether model.path may be left null (a packaged model serves the type)."""

    def __post_init__(self) -> None:
        if self.headline not in self.metrics:
            raise ValueError(f"headline {self.headline!r} is not among the metrics {self.metrics}")


EXPORT_ROUTES = ("transformers", "sentence-transformers")
"""How `fedbip export` writes a deployable folder (steps/export.py; `Task.export_route` picks one): a PEFT
adapter for a transformers class, or a sentence-transformers model (encoder, mean pooling, linear head)."""

CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "loss")

METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss", "perplexity": "perplexity",
                 "exact_match": "exact match", "token_f1": "token F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                 "rougeL": "ROUGE-L"}
"""How tables, reports and `fedbip eval` name each metric key."""

TASK_TYPES: dict[str, TaskType] = {
    "text-classification": TaskType("fedbip_cli.client.tasks.text.task:TextClassification", "SEQ_CLS", True,
                                    CLASSIFICATION_METRICS, "accuracy", "text-classification"),
    "causal-lm": TaskType("fedbip_cli.client.tasks.causal_lm.task:CausalLM", "CAUSAL_LM", False,
                          ("rougeL", "rouge1", "rouge2", "exact_match", "token_f1", "loss"), "rougeL",
                          "text-generation"),
    "image-classification": TaskType("fedbip_cli.client.tasks.image.task:ImageClassification", None, True,
                                     CLASSIFICATION_METRICS, "accuracy", "image-classification",
                                     packaged_model=False),
}
"""task.type -> its facts; the first is the default type."""


def task_type_names() -> tuple[str, ...]:
    """The valid values of task.type, in registry order."""
    return tuple(TASK_TYPES)


def task_type(name: str) -> TaskType:
    """The facts of task type `name`; UserError naming task.type when it is unknown."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise UserError(f"task.type: unknown task type {name!r} (choose one of {', '.join(TASK_TYPES)})") from None
