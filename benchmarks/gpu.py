"""Fine-tuning on one GPU, in one call of under 8 minutes: fedbip's training loop against transformers'
Trainer on a 7B-shaped Llama and on SmolLM2-135M, and one 4-bit QLoRA step.

Why one script: a session lent a GPU gets minutes of it, on a machine with no network; everything it
needs is built there (random weights) or carried in (the SmolLM2 folder, the bitsandbytes wheel), and
every part writes its figures to the JSON file as soon as it has them, so a run cut short keeps what it
measured.

Parts, each with LoRA r=16, alpha 32 on q_proj/v_proj, rows of at most --seq tokens (lengths drawn
between half and all of it, the last quarter of each row the response: labels -100 on the rest):

1. `llama-7b`: a Llama of LLaMA-7B's shape (hidden 4096, 32 layers, intermediate 11008, 32 heads,
   vocabulary 32,000) with random weights built on the device in bf16 (`--layers` builds fewer; the
   JSON says how many).
2. `smollm2`: SmolLM2-135M-Instruct from `--smollm2 FOLDER` (the dequantized safetensors folder that
   fedbip caches under $FEDBIP_CACHE/gguf/), else a random model of its shape.
3. Per model: fedbip's loop (client/train.py through the causal-lm task, base in bf16, LoRA in float32,
   bf16 autocast) and transformers' Trainer (bf16=True, the model's own loss, random batches padded to
   their longest row), the same rows, steps, learning rate, clipping; after one warm-up run each.
   Reported: tokens/s (real tokens, padding excluded), s/step, padding fraction and peak GPU memory
   (`torch.cuda.max_memory_allocated`, reset before each run).
4. `qlora`: the 7B-shaped model saved to --workdir and loaded by fedbip with model.quantization=4bit
   (nf4, double quantization, bf16 compute), then one training step: seconds and peak GPU memory.
   Skipped, with the reason in the JSON, without CUDA or bitsandbytes. The device machine has no
   network: carry the wheel (`pip download bitsandbytes --no-deps -d wheels/` here, then on the device
   `pip install --no-deps wheels/bitsandbytes-*.whl` before this script).

Run on the GPU machine (meant to fit one call of under 8 minutes; not yet run on a GPU):

    PYTHONPATH=. python benchmarks/gpu.py --out $OUT/gpu.json [--smollm2 FOLDER] [--layers 32]

CPU smoke test (tiny shapes, a few steps, seconds; tests/client/test_gpu_benchmark.py runs it):

    PYTHONPATH=. python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.decoder_finetune import PadCount  # noqa: E402
from benchmarks.finetune import trainer_arguments  # noqa: E402

LLAMA_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000}
SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512}


def random_llama(shape: dict[str, Any], dtype: Any, device: Any) -> Any:
    """A LlamaForCausalLM of `shape` with random weights, built in `dtype` straight on `device` (never a
    float32 copy of 7B parameters, never a host copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def rows(n: int, seq: int, vocab: int, seed: int = 0) -> Any:
    """`n` rows of random tokens, lengths between seq/2 and seq, the last quarter of each the response."""
    import random

    from fedbip_cli.client.tasks.causal_lm.data import LMData

    rng = random.Random(seed)
    ids, prompts = [], []
    for _ in range(n):
        length = rng.randint(max(2, seq // 2), seq)
        ids.append([rng.randrange(3, vocab) for _ in range(length)])
        prompts.append(length - max(1, length // 4))
    return LMData(ids, prompts, [""] * n)


def fedbip_config(a: argparse.Namespace, steps: int, **model: Any) -> Any:
    """The causal-lm config both sides copy: LoRA r=16/alpha 32 on q/v, constant lr, clipping at 1.0."""
    from fedbip_cli.workspace.config import Config, LoraSettings, ModelConfig, TaskConfig, TrainingConfig

    return Config(model=ModelConfig(max_length=a.seq, device=a.device, **model), task=TaskConfig(type="causal-lm"),
                  lora=LoraSettings(r=16, alpha=32.0, target_modules=["q_proj", "v_proj"], init="peft"),
                  training=TrainingConfig(max_steps=steps, batch_size=a.batch_size, learning_rate=1e-4,
                                          max_grad_norm=1.0, threads=a.threads))


class Meter:
    """Wall seconds and peak accelerator memory of a block (synchronized on CUDA)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self) -> "Meter":
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def run_fedbip(task: Any, data: Any, a: argparse.Namespace, steps: int, cuda: bool) -> dict[str, Any]:
    """fedbip's loop (client/train.py) on a fresh LoRA over the task's cached base."""
    from dataclasses import replace

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    cfg = fedbip_config(a, steps)
    task.cfg = cfg
    cm = ClientModel(cfg, 0, task)
    train(cm, data, replace(cfg.training, max_steps=a.warmup), 0, a.pad_id)  # first-call costs
    cm.reset_to_initial()
    count = PadCount(task.collate)
    task.collate = count
    try:
        with Meter(cuda) as m:
            res = train(cm, data, cfg.training, 0, a.pad_id)
    finally:
        del task.collate
    return {"seconds_per_step": m.seconds / steps, "tokens_per_second": count.real / m.seconds,
            "padding_fraction": count.padding_fraction, "peak_gpu_gib": m.peak_gib, "final_loss": res.final_loss}


def run_trainer(task: Any, data: Any, a: argparse.Namespace, steps: int, cuda: bool) -> dict[str, Any]:
    """transformers' Trainer on a fresh peft LoRA over the same base, rows and settings."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import Trainer

    from fedbip_cli.client.tasks.causal_lm.data import LMData, collate_lm

    cfg = fedbip_config(a, steps)
    base = task.shared_base_model(0, head_seed=0)  # a fresh module tree over the same weights
    model = get_peft_model(base, task.lora_config(cfg.lora, base), autocast_adapter_dtype=True)
    start = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    train_rows = [{"input_ids": ids, "prompt_length": p} for ids, p in zip(data.input_ids, data.prompt_lengths)]

    def pad_batch(features: list[dict]) -> dict:  # padded to the batch's longest row, labels -100 on prompt and padding
        part = LMData([f["input_ids"] for f in features], [f["prompt_length"] for f in features], [""] * len(features))
        return collate_lm(part, list(range(len(features))), a.pad_id)

    count = PadCount(pad_batch)
    out: dict[str, Any] = {}
    for n, measured in ((a.warmup, False), (steps, True)):
        with tempfile.TemporaryDirectory() as tmp:
            args = trainer_arguments(tmp, cfg.training, 0, max_steps=n, max_grad_norm=1.0, use_cpu=not cuda,
                                     bf16=cuda, remove_unused_columns=False, dataloader_pin_memory=cuda)
            set_peft_model_state_dict(model, start)  # the measured run starts from the initial adapter, as fedbip's
            trainer = Trainer(model=model, args=args, train_dataset=train_rows, data_collator=count)
            count.real = count.padded = 0
            with Meter(cuda) as m:
                metrics = trainer.train().metrics
        if measured:
            out = {"seconds_per_step": m.seconds / steps, "tokens_per_second": count.real / m.seconds,
                   "padding_fraction": count.padding_fraction, "peak_gpu_gib": m.peak_gib,
                   "final_loss": float(metrics["train_loss"])}
    del model, trainer
    return out


def compare(name: str, base: Any, a: argparse.Namespace, results: dict, cuda: bool) -> None:
    """fedbip and the Trainer on `base` (already on the device), into results[name]."""
    import torch

    from fedbip_cli.client.tasks import make_task

    steps = a.steps
    task = make_task(fedbip_config(a, steps))
    task.__dict__["_bases"] = {(0, 0): base}  # shared_base_model: this model, not the configured one
    data = rows(a.batch_size * (steps + a.warmup), a.seq, base.config.vocab_size)
    entry = {"parameters": sum(p.numel() for p in base.parameters()), "layers": base.config.num_hidden_layers,
             "dtype": str(next(base.parameters()).dtype)}
    results[name] = entry
    for side, fn in (("trainer", run_trainer), ("fedbip", run_fedbip)):
        entry[side] = fn(task, data, a, steps, cuda)
        if cuda:
            torch.cuda.empty_cache()
        write(a, results)
        print(f"{name} {side}: {entry[side]}", flush=True)
    entry["ratio_tokens_per_second"] = entry["fedbip"]["tokens_per_second"] / entry["trainer"]["tokens_per_second"]


def qlora_step(base: Any, a: argparse.Namespace, results: dict, cuda: bool, left: float) -> None:
    """One fedbip training step on `base` saved and reloaded in 4 bits (or why it was skipped); `left`:
    seconds of the call's budget still left (saving and quantizing a 7B model take minutes)."""
    import importlib.util

    why = None
    if not cuda:
        why = "no CUDA device"
    elif importlib.util.find_spec("bitsandbytes") is None:
        why = "bitsandbytes is not installed (carry its wheel: see the docstring)"
    elif left < 180:
        why = f"{left:.0f} s of the --budget left, under the 180 s that saving and quantizing need"
    if why:
        results["qlora"] = {"skipped": why}
        print(f"qlora: skipped: {why}", flush=True)
        return
    import torch

    from fedbip_cli.client.session import ClientModel
    from fedbip_cli.client.train import train

    folder = Path(a.workdir) / "llama-7b-shape"
    t0 = time.perf_counter()
    base.save_pretrained(folder)
    saved = time.perf_counter() - t0
    del base
    torch.cuda.empty_cache()
    cfg = fedbip_config(a, 1, path=str(folder), quantization="4bit", dtype="bfloat16")
    with Meter(cuda) as load:
        cm = ClientModel(cfg, 0)
    data = rows(a.batch_size, a.seq, cm.model.config.vocab_size)
    with Meter(cuda) as step:
        res = train(cm, data, cfg.training, 0, a.pad_id)
    results["qlora"] = {"save_seconds": saved, "load_seconds": load.seconds, "load_peak_gpu_gib": load.peak_gib,
                        "step_seconds": step.seconds, "step_peak_gpu_gib": step.peak_gib, "loss": res.final_loss,
                        "quantization": "4bit nf4, double quantization, bf16 compute"}
    print(f"qlora: {results['qlora']}", flush=True)


def write(a: argparse.Namespace, results: dict) -> None:
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the JSON results file")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny shapes, a few steps")
    ap.add_argument("--smollm2", default=None, help="SmolLM2-135M-Instruct safetensors folder (else random weights)")
    ap.add_argument("--layers", type=int, default=32, help="layers of the 7B-shaped model (fewer: less memory/time)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=tempfile.gettempdir() + "/fedbip-gpu")
    ap.add_argument("--budget", type=float, default=450, help="seconds the whole call may take (QLoRA skipped "
                                                               "when too little is left for it)")
    a = ap.parse_args()
    if a.smoke:
        a.seq, a.batch_size, a.steps, a.warmup = min(a.seq, 32), min(a.batch_size, 2), min(a.steps, 2), 1
    a.pad_id = 0

    import torch

    from fedbip_cli.client.loading import quiet_transformers

    quiet_transformers()
    cuda = torch.cuda.is_available() and not a.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    a.device = device
    t0 = time.perf_counter()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "smoke": a.smoke,
                               "seq": a.seq, "batch_size": a.batch_size, "steps": a.steps, "lora": "r=16 alpha=32 q/v",
                               "torch": torch.__version__}
    write(a, results)

    if a.smollm2:
        from transformers import AutoModelForCausalLM

        smol = AutoModelForCausalLM.from_pretrained(a.smollm2, dtype=dtype, device_map={"": device}).eval()
        results["smollm2_weights"] = a.smollm2
    else:
        smol = random_llama(TINY if a.smoke else SMOLLM2, dtype, device)
        results["smollm2_weights"] = "random (no --smollm2 folder)"
    compare("smollm2", smol, a, results, cuda)
    del smol

    shape = TINY if a.smoke else dict(LLAMA_7B, num_hidden_layers=a.layers)
    built = time.perf_counter()
    big = random_llama(shape, dtype, device)
    results["build_seconds_7b"] = time.perf_counter() - built
    compare("llama-7b", big, a, results, cuda)
    qlora_step(big, a, results, cuda, a.budget - (time.perf_counter() - t0))
    results["seconds"] = time.perf_counter() - t0
    write(a, results)
    print(f"done in {results['seconds']:.0f} s: {a.out}", flush=True)


if __name__ == "__main__":
    main()
