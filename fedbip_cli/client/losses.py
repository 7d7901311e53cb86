"""Losses shared by the training loop and the task types, kept apart from the loop so a task module can
use them without importing the loop (which imports the adapter session, which imports the tasks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t
