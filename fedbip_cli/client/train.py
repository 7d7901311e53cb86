"""Local fine-tuning of the LoRA adapter and head: a plain, seeded AdamW loop.

Why not transformers.Trainer: this loop pads each batch to its own length, groups similar lengths,
keeps the frozen base model in eval mode (its dropout masks cost time and only add noise to a model
that does not learn; LoRA's own dropout stays on), steps AdamW with one fused kernel, skips the
Trainer's per-step bookkeeping and does no gradient work in evaluation; see benchmarks/finetune.py
for the measured difference.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fedbip_cli.client.session import ClientModel
from fedbip_cli.client.tasks.text.batching import Encoded, train_order
from fedbip_cli.workspace.config import TrainingConfig


@dataclass
class TrainResult:
    steps: int
    examples: int
    final_loss: float
    mean_loss: float
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def fused_option() -> dict[str, bool]:
    """AdamW's fused kernel (one call per step instead of one per tensor) where this torch has it on CPU."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return {"fused": True} if (major, minor) >= (2, 4) else {"foreach": True}


def train_mode(model: torch.nn.Module) -> None:
    """Train mode for LoRA's dropout only; the frozen base model (dropout, attention dropout) stays in eval."""
    model.eval()
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            module.train()


def planned_steps(n: int, tc: TrainingConfig) -> int:
    per_epoch = math.ceil(n / tc.batch_size)
    return tc.max_steps if tc.max_steps is not None else max(1, math.ceil(per_epoch * tc.epochs))


def train(cm: ClientModel, data: Encoded, tc: TrainingConfig, seed: int, pad_id: int, *, freeze_a: bool = False,
          on_step: Callable[[int, int, float], None] | None = None, teacher_logits: torch.Tensor | None = None,
          kd_weight: float = 0.0, kd_temperature: float = 1.0, proximal: float = 0.0) -> TrainResult:
    """Fine-tune the adapter currently loaded in `cm` in place. Deterministic given `seed`.

    With `teacher_logits` (one row per example of `data`), the loss is TAP's distillation loss
    CE + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
    With `proximal` = mu > 0, the loss adds (mu / 2) * ||theta - theta_start||^2 over the trained tensors,
    pulling them towards the adapter training started from (FedAMP's client term, `Strategy.site_proximal`).
    """
    set_threads(tc.threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = cm.model
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(not freeze_a)
    lora = [p for n, p in cm.trainable_parameters() if "lora_" in n]
    head = [p for n, p in cm.trainable_parameters() if "lora_" not in n]
    opt = torch.optim.AdamW([
        {"params": lora, "lr": tc.learning_rate},
        {"params": head, "lr": tc.head_learning_rate or tc.learning_rate},
    ], weight_decay=tc.weight_decay, **fused_option())
    anchor = ProximalTerm(cm, proximal) if proximal else None
    total = planned_steps(len(data), tc)
    train_mode(model)
    step, seen, losses, t0 = 0, 0, [], time.perf_counter()
    while step < total:
        for idx in train_order(data, tc.batch_size, rng, cm.task.group_by_length):
            batch = cm.task.collate(data, idx, pad_id)  # the task type's batch and loss (client/tasks/)
            loss, logits = cm.task.loss(model, batch)
            if teacher_logits is not None and kd_weight:
                loss = loss + kd_weight * distillation_kl(logits, teacher_logits[idx], kd_temperature)
            if anchor is not None:
                loss = loss + anchor()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            losses.append(loss.item())
            if on_step:
                on_step(step, total, losses[-1])
            if step >= total:
                break
    model.eval()
    for p in model.parameters():
        p.grad = None
    tail = losses[-max(1, min(len(losses), 10)):]
    return TrainResult(step, seen, sum(tail) / len(tail), sum(losses) / len(losses), time.perf_counter() - t0)


class ProximalTerm:
    """(mu / 2) * ||theta - theta_0||^2 over the tensors being trained, theta_0 their values when built."""

    def __init__(self, cm: ClientModel, mu: float) -> None:
        self.mu = mu
        self.pairs = [(p, p.detach().clone()) for _, p in cm.trainable_parameters() if p.requires_grad]

    def __call__(self) -> torch.Tensor:
        return 0.5 * self.mu * sum(((p - p0) ** 2).sum() for p, p0 in self.pairs)


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t
