"""The training loss of a causal LM from the logits of the response positions only.

The vocabulary projection is a large share of a small decoder's work (SmolLM2-135M: 49,152 x 576, a
fifth of its parameters), and the float32 log-softmax over it is the largest activation of a step
(batch x length x 49k floats, 400 MB at batch 8 and length 256, then as much again for its gradient).
With the loss on the response tokens only, most positions (the prompt, the padding) need neither:
the model projects the hidden states of the positions that predict a response token and nothing else
(transformers' boolean `logits_to_keep`), which gives the same loss and gradient for less time and memory.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from fedbip_cli.client.tasks.causal_lm.data import IGNORE


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, length): the positions whose next token carries a label (position t predicts t + 1)."""
    return F.pad(labels[:, 1:] != IGNORE, (0, 1))


_TAKES_MASK: dict[str, bool] = {}


def takes_position_mask(cls: type[nn.Module]) -> bool:
    """Whether this model class's forward takes `logits_to_keep` (and this transformers reads a boolean
    mask there: `slice_logits_to_keep`, transformers 5); looked up once per class."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _TAKES_MASK:
        import transformers.modeling_utils as mu  # on first use: importing this module stays cheap

        _TAKES_MASK[key] = (hasattr(mu, "slice_logits_to_keep")
                            and "logits_to_keep" in inspect.signature(cls.forward).parameters)
    return _TAKES_MASK[key]


def response_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets): the (N, vocab) logits at the N positions that predict a response token, row by
    row in order, and those N tokens. Models without a boolean `logits_to_keep` compute every position's
    logits and keep these rows (the same values)."""
    keep = predicting_positions(batch["labels"])
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    get_base = getattr(model, "get_base_model", None)  # a peft model: the transformers model inside
    base: nn.Module = get_base() if callable(get_base) else model
    if takes_position_mask(type(base)):
        logits = model(**inputs, logits_to_keep=keep).logits
        if logits.dim() == 2 and logits.shape[0] == targets.shape[0]:
            return logits, targets
    return model(**inputs).logits[keep], targets


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL over the batch's response tokens, their logits), the NLL computed in float32."""
    logits, targets = response_logits(model, batch)
    nll = F.cross_entropy(logits.float(), targets, reduction="sum")
    return nll / max(targets.numel(), 1), logits
