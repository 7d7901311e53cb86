"""Config keys of task types and per-client LoRA settings: validation, for_client, nested initial A."""

from __future__ import annotations

import re

import pytest

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import Config, parse_config


def test_per_client_rank_and_alpha():
    cfg = parse_config({"lora": {"r": 4}, "clients": {"a": {"train": "a.jsonl", "lora_r": 8, "lora_alpha": 4},
                                                      "b": {"train": "b.jsonl"}}})
    assert cfg.for_client("b") is cfg and cfg.for_client("a").lora.r == 8 and cfg.for_client("a").lora.alpha == 4.0
    assert cfg.lora.r == 4 and cfg.nested_init() and not Config().nested_init()
    with pytest.raises(UserError, match=re.escape("clients.a.lora_r: must be in (0, 65536], got 0")):
        parse_config({"clients": {"a": {"train": "a.jsonl", "lora_r": 0}}})


def test_task_type_is_checked():
    with pytest.raises(UserError, match="task.type: must be one of text-classification, causal-lm"):
        parse_config({"task": {"type": "segmentation"}})
    with pytest.raises(UserError, match=re.escape("task.max_new_tokens: must be in (0, 65536]")):
        parse_config({"model": {"path": "m"}, "task": {"type": "causal-lm", "max_new_tokens": 0}})


def test_nested_rows_are_prefixes_of_larger_ranks():
    from fedbip_cli.client.lora_init import nested_rows

    big, small = nested_rows(0, "layer.q", 16, 32), nested_rows(0, "layer.q", 4, 32)
    assert (big[:4] == small).all() and not (nested_rows(0, "layer.v", 4, 32) == small).all()
    assert float(big.abs().max()) <= 32 ** -0.5
