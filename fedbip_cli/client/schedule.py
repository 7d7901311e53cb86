"""The learning-rate schedule of a round: linear warm-up from 0, then constant, linear or cosine decay
to 0 over the round's optimizer steps (the formulas of transformers' get_*_schedule_with_warmup, so a
Trainer run with the same settings steps the same learning rates)."""

from __future__ import annotations

import math

import torch

from fedbip_cli.workspace.config import TrainingConfig


def warmup_steps(tc: TrainingConfig, total: int) -> int:
    """training.warmup_steps, else ceil(training.warmup_ratio x total), else 0."""
    if tc.warmup_steps is not None:
        return tc.warmup_steps
    if tc.warmup_ratio is not None:
        return math.ceil(tc.warmup_ratio * total)
    return 0


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the configured learning rate at optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def make_scheduler(opt: torch.optim.Optimizer, tc: TrainingConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping every parameter group's learning rate by `lr_factor`."""
    warmup = warmup_steps(tc, total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, tc.lr_scheduler))
