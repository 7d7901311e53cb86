"""The task types fedbip knows, by name (light: no torch), so the config can check task.type."""

from __future__ import annotations


def task_type_names() -> list[str]:
    return ["text-classification", "causal-lm", "image-classification"]
