"""causal-lm data: JSONL rows of prompt/response (or Alpaca's instruction/input/output) put through the
prompt template, tokenized once, with the loss mask kept as the number of prompt tokens.

Prompt and response are tokenized separately and concatenated, which is exactly what the model sees
at generation time (the prompt alone, then its own tokens), so the tokens trained on are the tokens
generated. The response ends with the tokenizer's EOS so the model learns where to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedbip_cli.client.readers import jsonl_rows
from fedbip_cli.client.splits import PerTask
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import TaskConfig

IGNORE = -100
"""Label of tokens that carry no loss (prompt and padding): torch's cross_entropy ignore_index."""

ALPACA = ("instruction", "input", "output")


@dataclass(frozen=True)
class Pair:
    prompt: str
    """The prompt after the template."""
    response: str
    task: str | None = None


@dataclass
class LMData(PerTask):
    """Token ids of prompt + response (+ EOS), how many of them are prompt, and the reference responses."""

    input_ids: list[list[int]]
    prompt_lengths: list[int]
    references: list[str]
    tasks: list[str] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def prompt(self, i: int) -> list[int]:
        return self.input_ids[i][: self.prompt_lengths[i]]


def read_pairs(path: Path, task: TaskConfig) -> list[Pair]:
    """Rows with task.prompt_field/task.response_field, or Alpaca rows, as templated prompts."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise UserError(f"{path}: unsupported data format {path.suffix!r} for causal-lm (use .jsonl)")
    pairs = [_pair(path, line, row, task) for line, row in jsonl_rows(path)]
    if not pairs:
        raise UserError(f"{path}: data file holds no examples")
    return pairs


def _pair(path: Path, line: int, row: dict, task: TaskConfig) -> Pair:
    key = task.response_field if task.prompt_field in row else ALPACA[2]
    response = row.get(key)
    if ALPACA[0] in row or task.prompt_field in row:
        if not isinstance(response, str) or not response.strip():
            raise UserError(f"{path}:{line}: field {key!r} must be a non-empty string")
    text = template_prompt(path, line, row, task, needs=f"{task.prompt_field!r} and {task.response_field!r}, "
                                                        f"or instruction/input/output")
    name = None
    if task.task_field is not None:
        name = row.get(task.task_field, "default")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{path}:{line}: field {task.task_field!r} (the task name) must be a non-empty string")
    assert isinstance(response, str)  # checked above: template_prompt refuses a row without a prompt
    return Pair(text, response, name)


def template_prompt(path: Path, line: int, row: dict, task: TaskConfig, needs: str | None = None) -> str:
    """The text the model sees before the response: task.prompt_field through prompt_template, or an
    Alpaca row's instruction (and input) through the templates; `fedbip predict` needs no response."""
    if task.prompt_field in row:
        key, extra = task.prompt_field, ""
    elif ALPACA[0] in row:
        key, extra = ALPACA[0], row.get(ALPACA[1]) or ""
    else:
        raise UserError(f"{path}:{line}: expected fields {needs or repr(task.prompt_field) + ', or instruction/input'}")
    prompt = row.get(key)
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{path}:{line}: field {key!r} must be a non-empty string")
    if not isinstance(extra, str):
        raise UserError(f"{path}:{line}: field {ALPACA[1]!r} must be a string")
    return (task.prompt_template_with_input.format(prompt=prompt, input=extra) if extra.strip()
            else task.prompt_template.format(prompt=prompt))


def fit(prompt: list[int], response: list[int], max_length: int, keep_first: bool) -> tuple[list[int], list[int]]:
    """Cut prompt + response to max_length: the response keeps at least half the budget (or all of
    itself), the prompt loses its oldest tokens (after a leading BOS, kept when `keep_first`)."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    response = response[: max(max_length - len(prompt), min(len(response), max_length // 2), 1)]
    room = max_length - len(response)  # >= 1, as max_length >= 2
    if len(prompt) > room:
        prompt = prompt[:1] + prompt[len(prompt) - room + 1:] if keep_first and room >= 2 else prompt[-room:]
    return prompt, response


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int, tasks: bool) -> LMData:
    """Tokenize prompts (with the tokenizer's special tokens) and responses (without; + EOS)."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    prompts = tokenizer([p.prompt for p in pairs], add_special_tokens=True)["input_ids"]
    responses = tokenizer([p.response for p in pairs], add_special_tokens=False)["input_ids"]
    ids, lengths = [], []
    for p, r in zip(prompts, responses):
        p = list(p)
        if eos is not None and len(p) > 1 and p[-1] == eos:  # tokenizers that close every text with EOS
            p = p[:-1]
        r = list(r) + ([eos] if eos is not None else [])
        p, r = fit(p, r, max_length, keep_first=bos is not None and bool(p) and p[0] == bos)
        ids.append(p + r)
        lengths.append(len(p))
    return LMData(ids, lengths, [p.response for p in pairs],
                  [p.task or "default" for p in pairs] if tasks else None)  # (read_pairs sets each task)


def collate_lm(data: LMData, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are the token ids on response tokens and IGNORE elsewhere."""
    longest = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    labels = torch.full((len(idx), longest), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        seq, start = torch.tensor(data.input_ids[i], dtype=torch.long), data.prompt_lengths[i]
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, start: len(seq)] = seq[start:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
