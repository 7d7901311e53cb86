"""Local fine-tuning of the LoRA adapter and head: a plain, seeded AdamW loop with gradient
accumulation, clipping, a warm-up/decay schedule and autocast on a GPU.

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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypedDict

import torch

from fedbip_cli.client.batching import train_order
from fedbip_cli.client.precision import checkpointed_layers
from fedbip_cli.client.schedule import make_scheduler
from fedbip_cli.client.session import ClientModel
from fedbip_cli.client.tasks.base import Split
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


@contextmanager
def training_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count set to `threads` (training.threads) while training, restored afterwards:
    evaluation's large batches keep torch's default (one thread per core), while small training batches
    can be faster on one thread, especially on a shared machine."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class KernelOption(TypedDict, total=False):
    """AdamW's keyword for its multi-tensor kernel."""

    fused: bool
    foreach: bool


def fused_option() -> KernelOption:
    """AdamW's fused kernel (one call per step instead of one per tensor) where this torch has it on CPU."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return {"fused": True} if (major, minor) >= (2, 4) else {"foreach": True}


def train_mode(model: torch.nn.Module, checkpointing: bool = False) -> None:
    """Train mode for LoRA's dropout only; the frozen base model (dropout, attention dropout) stays in eval.

    With gradient checkpointing, the checkpointing layers themselves (not their children) are flagged
    as training, which is what makes transformers recompute their activations in the backward pass.
    """

    model.eval()
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            module.train()
    if checkpointing:
        for layer in checkpointed_layers(model):
            layer.training = True


def planned_steps(n: int, tc: TrainingConfig) -> int:
    """Optimizer steps of a round: max_steps, else epochs over batches of batch_size x accumulation."""
    per_epoch = math.ceil(n / (tc.batch_size * tc.gradient_accumulation_steps))
    return tc.max_steps if tc.max_steps is not None else max(1, math.ceil(per_epoch * tc.epochs))


def accumulation_groups(batches: list[list[int]], k: int) -> list[list[list[int]]]:
    """Consecutive micro-batches, k per optimizer step (the last group of an epoch may hold fewer)."""
    return [batches[s:s + k] for s in range(0, len(batches), k)]


@torch.no_grad()
def teacher_outputs(cm: ClientModel, teacher_state: dict[str, torch.Tensor],
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The outputs of the adapter `teacher_state` on a batch, computed by swapping it into `cm` and
    back (in place: the optimizer's parameters stay the same objects). For causal-lm, whose per-token
    teacher logits are far too large to keep for a whole split."""
    student = {k: v.detach().clone() for k, v in cm.trainable_state().items()}
    cm.load_state(teacher_state, "teacher")
    try:
        with cm.autocast():
            return cm.task.loss(cm.model, batch)[1].float()
    finally:
        cm.load_state(student, "student")


@torch.no_grad()
def distillation_gap(cm: ClientModel, data: Split, pad_id: int, teacher_state: dict[str, torch.Tensor],
                     temperature: float, batch_size: int) -> float:
    """Mean TAP KL (per example, or per response token for causal-lm) of the loaded adapter to the
    `teacher_state` adapter over `data`, in evaluation mode."""
    cm.model.eval()
    total, weight = 0.0, 0
    for s in range(0, len(data), batch_size):
        batch = cm.to_device(cm.task.collate(data, list(range(s, min(s + batch_size, len(data)))), pad_id))
        target = teacher_outputs(cm, teacher_state, batch)
        with cm.autocast():
            student = cm.task.loss(cm.model, batch)[1].float()
        w = cm.task.loss_weight(batch)
        total += float(cm.task.distill_kl(student, target, batch, temperature)) * w
        weight += w
    return total / max(weight, 1)


def accumulate_gradients(cm: ClientModel, batches: list[dict[str, torch.Tensor]], *,
                         scaler: torch.amp.GradScaler | None = None,
                         teacher: list[torch.Tensor] | None = None, kd_weight: float = 0.0,
                         kd_temperature: float = 1.0, teacher_state: dict[str, torch.Tensor] | None = None) -> float:
    """Backward of the micro-batches' losses, each weighted by its share of the loss terms (examples, or
    response tokens for causal-lm), so the summed gradient is that of one batch holding them all.
    With `teacher` outputs (one tensor per micro-batch) or a `teacher_state` adapter, the loss adds TAP's
    distillation term. Returns the combined loss."""
    weights = [cm.task.loss_weight(b) for b in batches]
    total = sum(weights)
    combined = 0.0
    for i, (batch, weight) in enumerate(zip(batches, weights)):
        batch = cm.to_device(batch)
        target = None
        if kd_weight and teacher_state is not None:
            target = teacher_outputs(cm, teacher_state, batch)
        elif kd_weight and teacher is not None:
            target = teacher[i].to(cm.device)
        with cm.autocast():
            loss, logits = cm.task.loss(cm.model, batch)
        if target is not None:
            loss = loss + kd_weight * cm.task.distill_kl(logits.float(), target, batch, kd_temperature)
        loss = loss * (weight / total) if len(batches) > 1 else loss
        (scaler.scale(loss) if scaler is not None else loss).backward()
        combined += loss.item()
    return combined


def train(cm: ClientModel, data: Split, tc: TrainingConfig, seed: int, pad_id: int, *, freeze_a: bool = False,
          on_step: Callable[[int, int, float], None] | None = None, teacher_logits: torch.Tensor | None = None,
          kd_weight: float = 0.0, kd_temperature: float = 1.0,
          teacher_state: dict[str, torch.Tensor] | None = None, proximal: float = 0.0) -> TrainResult:
    """Fine-tune the adapter loaded in `cm` in place (see `_train`), with training.threads torch threads."""
    with training_threads(tc.threads):
        return _train(cm, data, tc, seed, pad_id, freeze_a=freeze_a, on_step=on_step, teacher_logits=teacher_logits,
                      kd_weight=kd_weight, kd_temperature=kd_temperature, teacher_state=teacher_state,
                      proximal=proximal)


def _train(cm: ClientModel, data: Split, tc: TrainingConfig, seed: int, pad_id: int, *, freeze_a: bool = False,
          on_step: Callable[[int, int, float], None] | None = None, teacher_logits: torch.Tensor | None = None,
          kd_weight: float = 0.0, kd_temperature: float = 1.0,
          teacher_state: dict[str, torch.Tensor] | None = None, proximal: float = 0.0) -> TrainResult:
    """Fine-tune the adapter currently loaded in `cm` in place. Deterministic given `seed`.

    Each optimizer step accumulates training.gradient_accumulation_steps micro-batches of batch_size,
    clips the gradient norm to training.max_grad_norm, and steps the learning-rate schedule; on a GPU
    the forward passes run under autocast in the model's dtype (fp16 with a gradient scaler).
    With `teacher_logits` (one row per example of `data`), or a `teacher_state` adapter whose outputs
    are computed batch by batch (causal-lm: token-level, on the response tokens), the loss is TAP's
    distillation loss CE + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
    With `proximal` = mu > 0, every optimizer step adds (mu / 2) * ||theta - theta_start||^2 over the trained
    tensors, pulling them towards the adapter training started from (FedAMP's client term,
    `Strategy.site_proximal`).
    """

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
    scheduler = make_scheduler(opt, tc, total)
    half = cm.placement.autocast_dtype == torch.float16
    scaler = torch.amp.GradScaler(cm.device.type) if half else None
    train_mode(model, tc.gradient_checkpointing)
    step, seen, losses, t0 = 0, 0, [], time.perf_counter()
    while step < total:
        order = train_order(len(data), tc.batch_size, rng, cm.task.example_lengths(data))
        for group in accumulation_groups(order, tc.gradient_accumulation_steps):
            batches = [cm.task.collate(data, idx, pad_id) for idx in group]  # the task type's batches (client/tasks/)
            teacher = [teacher_logits[idx] for idx in group] if teacher_logits is not None else None
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradients(cm, batches, scaler=scaler, teacher=teacher, kd_weight=kd_weight,
                                        kd_temperature=kd_temperature, teacher_state=teacher_state)
            if anchor is not None:  # once per optimizer step, whatever the number of micro-batches
                pull = anchor()
                (scaler.scale(pull) if scaler is not None else pull).backward()
                loss += float(pull.detach())  # a number for the log: no autograd warning per step
            if scaler is not None:
                scaler.unscale_(opt)
            if tc.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(lora + head, tc.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            scheduler.step()
            step += 1
            seen += sum(len(idx) for idx in group)
            losses.append(loss)
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
        total = sum(((p - p0) ** 2).sum() for p, p0 in self.pairs)
        assert isinstance(total, torch.Tensor)  # pairs is never empty: the LoRA B factors always train
        return 0.5 * self.mu * total

