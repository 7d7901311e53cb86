"""Throughput of fedbip's local fine-tuning loop against a plain Hugging Face `Trainer`, in one run.

Both train the same model (packaged all-MiniLM-L6-v2, mean pooling, LoRA r=8 on query/value plus
the head) from the same initial adapter on the same examples, with the same batch size, maximum
sequence length, number of steps, learning rate (constant) and torch threads. The Trainer gets what
a plain run uses: truncated tokenization and its default collator (dynamic padding, random batches).
fedbip's loop (client/train.py) groups similar lengths into a batch and keeps the frozen base model's
dropout off. Runs alternate between the two
(best of --repeats each), so a busy machine slows both alike. Quality check: the loss of each trained
adapter on the same held-out examples.

    python benchmarks/finetune.py [--steps 24] [--repeats 2] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def corpora(n_train: int, n_eval: int) -> dict[str, tuple[list[str], list[int], list[str], list[int]]]:
    """BBC articles (title + opening, 600 characters) and short texts (BBC titles only)."""
    import random

    from fedbip_cli.datasets.bbc import bbc_root, load_bbc

    texts, labels, topics = load_bbc(max_chars=600)
    titles = []
    root = bbc_root()
    for topic in topics:
        for f in sorted((root / topic).glob("*.txt")):
            line = f.read_bytes().decode("utf-8", errors="replace").strip().splitlines()
            if line and line[0].strip():
                titles.append((line[0].strip(), topics.index(topic)))
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    tr, ev = order[:n_train], order[n_train:n_train + n_eval]
    y = [topics.index(lab) for lab in labels]
    return {
        "bbc": ([texts[i] for i in tr], [y[i] for i in tr], [texts[i] for i in ev], [y[i] for i in ev]),
        "short": ([titles[i][0] for i in tr], [titles[i][1] for i in tr],
                  [titles[i][0] for i in ev], [titles[i][1] for i in ev]),
    }


def run_fedbip(cm, data, tc, seed: int, pad_id: int) -> tuple[float, float]:
    """(examples/s, wall seconds) of client/train.py's loop from the initial adapter."""
    from fedbip_cli.client.train import train

    cm.reset_to_initial()
    t0 = time.perf_counter()
    res = train(cm, data, tc, seed, pad_id)
    wall = time.perf_counter() - t0
    return res.examples / wall, wall


def trainer_arguments(out: str, tc, seed: int, **extra):
    """The Trainer's settings for a run like fedbip's `tc`: batch size, steps, constant learning rate,
    plain AdamW without weight decay, CPU, no saving, logging or progress bar (`extra` overrides)."""
    from transformers import TrainingArguments

    return TrainingArguments(**{**dict(output_dir=out, per_device_train_batch_size=tc.batch_size,
                                       max_steps=tc.max_steps, learning_rate=tc.learning_rate,
                                       lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                                       optim="adamw_torch", seed=seed, report_to=[], save_strategy="no",
                                       logging_strategy="no", use_cpu=True, disable_tqdm=True), **extra})


def run_trainer(cm, tokenizer, data, tc, seed: int) -> tuple[float, float]:
    """(examples/s, wall seconds) of transformers.Trainer on the same model, data and settings."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class WithLoss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, labels=None, **_):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    cm.reset_to_initial()
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y}
            for ids, y in zip(data.input_ids, data.labels)]
    with tempfile.TemporaryDirectory() as out:
        args = trainer_arguments(out, tc, seed)
        trainer = Trainer(model=WithLoss(cm.model), args=args, train_dataset=rows, processing_class=tokenizer)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    cm.model.eval()
    return tc.max_steps * tc.batch_size / wall, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    import torch

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.tasks.text.batching import encode_texts
    from fedbip_cli.client.tasks.text.metrics import evaluate
    from fedbip_cli.client.tasks.text.model import load_tokenizer
    from fedbip_cli.workspace.config import Config

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = Config()
    cfg.model.max_length = a.max_length
    tc = replace(cfg.training, max_steps=a.steps, batch_size=a.batch_size, learning_rate=5e-4, threads=a.threads)
    tok = load_tokenizer(cfg)
    cm = ClientModel(cfg, 5)
    pad = tok.pad_token_id or 0
    n_train = a.steps * a.batch_size
    results = {"threads": torch.get_num_threads(), "steps": a.steps, "batch_size": a.batch_size,
               "max_length": a.max_length, "load_before": os.getloadavg()[0], "corpora": {}}
    for name, (xt, yt, xe, ye) in corpora(n_train, 200).items():
        train_data = encode_texts(tok, xt, yt, a.max_length)
        eval_data = encode_texts(tok, xe, ye, a.max_length)
        run_fedbip(cm, train_data, replace(tc, max_steps=2), 0, pad)  # warm-up: first-call costs of both
        run_trainer(cm, tok, train_data, replace(tc, max_steps=2), 0)
        speeds: dict[str, list[float]] = {"trainer": [], "fedbip": []}
        losses = {}
        for _ in range(a.repeats):
            speeds["trainer"].append(run_trainer(cm, tok, train_data, tc, 0)[0])
            losses["trainer"] = evaluate(cm, eval_data, pad)["loss"]
            speeds["fedbip"].append(run_fedbip(cm, train_data, tc, 0, pad)[0])
            losses["fedbip"] = evaluate(cm, eval_data, pad)["loss"]
        best = {k: max(v) for k, v in speeds.items()}
        row = {"mean_tokens": statistics.mean(len(x) for x in train_data.input_ids),
               "examples_per_second": best, "all_runs": speeds, "ratio": best["fedbip"] / best["trainer"],
               "heldout_loss": losses}
        results["corpora"][name] = row
        print(f"{name:>6}: {row['mean_tokens']:.0f} tokens/example  trainer {best['trainer']:.1f} ex/s  "
              f"fedbip {best['fedbip']:.1f} ex/s  ratio {row['ratio']:.2f}x  held-out loss trainer "
              f"{losses['trainer']:.4f} fedbip {losses['fedbip']:.4f}", flush=True)
    results["load_after"] = os.getloadavg()[0]
    print(f"torch threads {results['threads']}; load average before {results['load_before']:.1f}, "
          f"after {results['load_after']:.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
