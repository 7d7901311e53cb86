"""causal-lm evaluation: response-token loss and perplexity, and greedy generations scored by ROUGE-1/2/L,
exact match and token F1 against the reference responses.

Greedy decoding with a bound on new tokens keeps `fedbip eval` deterministic and its cost known.
ROUGE is Google's `rouge-score` (the ROUGE-1.5.5 reimplementation that t5's metrics, hence the Flan
federated papers, wrap), F-measure with the Porter stemmer: the figures the field reports. Exact match
and token F1 are computed on lower-cased text without punctuation and extra spaces (SQuAD's
normalisation, minus its English-only article removal).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fedbip_cli.client.tasks.causal_lm.data import IGNORE, LMData, collate_lm
from fedbip_cli.client.tasks.causal_lm.loss import predicting_positions, response_logits
from fedbip_cli.errors import UserError

if TYPE_CHECKING:  # peft costs ~1 s to import: only for the annotations
    from peft import PeftModel
    from transformers import GenerationMixin

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of normalized words (1.0 when both are empty)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
"""The ROUGE variants reported, by rouge-score's names (also the metric keys)."""


@lru_cache(maxsize=1)
def rouge_scorer() -> Any:
    """rouge-score's scorer, imported on first use (it imports nltk: about 2 s)."""
    try:
        from rouge_score.rouge_scorer import RougeScorer  # lazy: an optional extra, and nltk costs ~2 s
    except ImportError:
        raise UserError("causal-lm evaluation needs rouge-score: pip install 'fedbip[llm]'") from None
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, -2 and -L F-measures of one generation against its reference (0 when either is empty)."""
    scores = rouge_scorer().score(reference, prediction)
    return {k: float(scores[k].fmeasure) for k in ROUGE_TYPES}


def shifted_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed negative log-likelihood of each token given the ones before it (labels
    IGNORE carry none): position t's logits predict token t + 1."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                          reduction="none")
    return nll.view(target.shape).sum(1)


def batches_by_length(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]


@torch.inference_mode()
def response_nll(model: nn.Module, data: LMData, pad_id: int, batch_size: int,
                 device: torch.device | None = None) -> tuple[list[float], list[int]]:
    """Summed NLL of each example's response tokens, and their count (batched on `device`, no cache;
    the vocabulary projection at the response positions only, causal_lm/loss.py)."""
    nll, counts = [0.0] * len(data), [0] * len(data)
    for idx in batches_by_length([len(x) for x in data.input_ids], batch_size):
        batch = collate_lm(data, idx, pad_id)
        logits, targets = response_logits(model, {k: v.to(device) for k, v in batch.items()})
        rows = predicting_positions(batch["labels"]).nonzero()[:, 0]  # the example of each logits row
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none").cpu()
        sums = torch.zeros(len(idx)).index_add_(0, rows, token_nll)
        for row, i in enumerate(idx):
            nll[i] = float(sums[row])
            counts[i] = int((batch["labels"][row, 1:] != IGNORE).sum())
    return nll, counts


@torch.inference_mode()
def greedy_generate(model: PeftModel | GenerationMixin, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int,
                    eos_id: int | None, batch_size: int, device: torch.device | None = None) -> list[list[int]]:
    """Greedy continuations of each prompt (left-padded batches on `device`, with the KV cache of
    `generate`), at most `max_new_tokens` each, cut at the first EOS."""
    # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id,
                           eos_token_id=eos_id, bos_token_id=None, use_cache=True)
    out: list[list[int]] = [[] for _ in prompts]
    for idx in batches_by_length([len(p) for p in prompts], batch_size):
        longest = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, longest - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[row, longest - len(prompts[i]):] = 1
        new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=gen)[:, longest:].cpu()
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            out[i] = tokens[: tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens
    return out


def lm_metrics(nll: list[float], counts: list[int], predictions: list[str], references: list[str]) -> dict[str, float]:
    """Token-weighted loss, its perplexity, and the mean ROUGE-1/2/L, exact match and token F1."""
    tokens = sum(counts)
    loss = sum(nll) / max(tokens, 1)
    n = max(len(references), 1)
    scores = [rouge(p, r) for p, r in zip(predictions, references)]
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        **{k: sum(s[k] for s in scores) / n for k in ROUGE_TYPES},
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "token_f1": sum(map(token_f1, predictions, references)) / n,
        "examples": len(references),
        "response_tokens": tokens,
    }
