"""Tokenize once, then serve dynamically padded batches (each padded to its own longest sequence).

Which examples share a training batch (grouped by length) is the task-neutral client/batching.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from fedbip_cli.client.splits import PerTask


@dataclass
class Encoded(PerTask):
    """Token ids (unpadded), label indices and (optionally) task names of one data split."""

    input_ids: list[list[int]]
    labels: list[int]
    tasks: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def encode_texts(tokenizer, texts: list[str], labels: list[int], max_length: int,
                 tasks: list[str] | None = None) -> Encoded:
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    return Encoded([list(x) for x in ids], list(labels), tasks)


def collate(data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.labels[i] for i in idx])}


def eval_batches(data: Encoded, batch_size: int, pad_id: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(example indices, batch) in length order: least padding; results are put back by index."""
    order = sorted(range(len(data)), key=lambda j: len(data.input_ids[j]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield idx, collate(data, idx, pad_id)
