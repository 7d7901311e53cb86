"""task.type causal-lm: instruction tuning of a decoder (AutoModelForCausalLM by path) with LoRA on its
attention projections and no head; the loss covers the response tokens only (data.py), and
`fedbip eval` reports response loss, perplexity, and ROUGE-1/2/L, exact match and token F1 of greedy
generations (metrics.py), overall and per task (task.task_field).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedbip_cli.client import loading
from fedbip_cli.client.loading import base_folder, quiet_transformers
from fedbip_cli.client.losses import distillation_kl
from fedbip_cli.client.splits import task_indices
from fedbip_cli.client.tasks.base import Task
from fedbip_cli.client.tasks.causal_lm.data import (
    LMData,
    Pair,
    collate_lm,
    encode_pairs,
    read_pairs,
    template_prompt,
)
from fedbip_cli.client.tasks.causal_lm.loss import response_loss
from fedbip_cli.client.tasks.causal_lm.metrics import (
    greedy_generate,
    lm_metrics,
    response_nll,
)
from fedbip_cli.client.tasks.text.model import load_tokenizer

if TYPE_CHECKING:  # the session imports the tasks
    from fedbip_cli.client.session import ClientModel


class CausalLM(Task[LMData]):
    predict_formats = (".jsonl", ".json", ".ndjson")
    export_auto_class = "AutoModelForCausalLM"

    def load_processor(self) -> Any:
        return load_tokenizer(self.cfg)

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad token, else EOS (decoders often have no pad token; padding is masked)."""
        tok = self.processor
        return next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)

    def build_base_model(self, num_labels: int, head_seed: int | None = None) -> nn.Module:
        quiet_transformers()
        # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
        from transformers import AutoModelForCausalLM

        return loading.load_pretrained(AutoModelForCausalLM, base_folder(self.cfg), self.placement,
                                       "a causal LM")

    def load_split(self, path: Path, labels: list[str]) -> LMData:
        task = self.cfg.task
        pairs = read_pairs(path, task)
        return encode_pairs(self.processor, pairs, self.cfg.model.max_length, tasks=task.task_field is not None)

    def collate(self, data: LMData, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_lm(data, idx, pad_id)

    def example_lengths(self, data: LMData) -> list[int]:
        return [len(ids) for ids in data.input_ids]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean NLL over the batch's response tokens, and the (tokens, vocab) logits at the positions that
        predict them: the vocabulary projection runs at those positions only (causal_lm/loss.py)."""
        return response_loss(model, batch)

    def distill_kl(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, torch.Tensor],
                   temperature: float) -> torch.Tensor:
        """Token-level: the KL of the next-token distributions at the response positions (the rows of
        `loss`'s logits), per token."""
        return distillation_kl(student.float(), teacher.float(), temperature)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> int:
        return max(int((batch["labels"][:, 1:] != -100).sum()), 1)

    def evaluate(self, cm: ClientModel, data: LMData, pad_id: int) -> dict[str, Any]:
        """Loss and perplexity over response tokens; ROUGE, exact match and token F1 of greedy generations."""
        cm.model.eval()
        batch = self.cfg.training.batch_size
        tok = self.processor
        with cm.autocast():
            nll, counts = response_nll(cm.model, data, pad_id, batch, cm.device)
            generated = greedy_generate(cm.model, [data.prompt(i) for i in range(len(data))],
                                        max_new_tokens=self.cfg.task.max_new_tokens, pad_id=pad_id,
                                        eos_id=tok.eos_token_id, batch_size=batch, device=cm.device)
        predictions = [tok.decode(g, skip_special_tokens=True).strip() for g in generated]
        metrics: dict[str, Any] = lm_metrics(nll, counts, predictions, data.references)
        if data.tasks:
            metrics["per_task"] = {}
            for name in data.task_names():
                idx = task_indices(data.tasks, len(data), name)
                metrics["per_task"][name] = lm_metrics([nll[i] for i in idx], [counts[i] for i in idx],
                                                       [predictions[i] for i in idx], [data.references[i] for i in idx])
        metrics["samples"] = [{"prediction": p, "reference": r} for p, r in zip(predictions[:3], data.references[:3])]
        return metrics

    def predict_item(self, path: Path, line: int, row: dict[str, Any]) -> str:
        """The row's prompt through the prompt template (task.prompt_field, or Alpaca's instruction/input)."""
        return template_prompt(path, line, row, self.cfg.task)

    def predict(self, cm: ClientModel, items: list[str], labels: list[str]) -> list[dict[str, Any]]:
        """Greedy generations, as `fedbip eval` makes them (same tokenization, same length bound)."""
        tok = self.processor
        data = encode_pairs(tok, [Pair(p, "") for p in items], self.cfg.model.max_length, tasks=False)
        generated = greedy_generate(cm.model, [data.prompt(i) for i in range(len(data))],
                                    max_new_tokens=self.cfg.task.max_new_tokens, pad_id=self.pad_id,
                                    eos_id=tok.eos_token_id, batch_size=len(items), device=cm.device)
        return [{"generation": tok.decode(g, skip_special_tokens=True).strip()} for g in generated]

    def load_code(self, merge: bool, base: str, num_labels: int) -> list[str]:
        """peft's AutoPeftModelForCausalLM finds the base itself (base_model_name_or_path)."""
        if merge:
            return ["from transformers import AutoModelForCausalLM",
                    'model = AutoModelForCausalLM.from_pretrained("DIR")']
        return ["from peft import AutoPeftModelForCausalLM",
                'model = AutoPeftModelForCausalLM.from_pretrained("DIR")  # base: ' + base]
