"""Fine-tuning a foundation-model-sized decoder: `fedbip finetune` against a plain transformers Trainer + peft.

The benchmark builds a random Llama-shaped decoder (default about 705M parameters: hidden 2048,
16 layers, intermediate 5632, 32 heads, 4 KV heads, DESIGN §6) saved in bf16 like any Llama
checkpoint, and a causal-lm workspace on examples/multitask's data. Then, each in its own process so
that peak memory is its own:

- fedbip: what `fedbip finetune -c copy -r 0` runs (the workspace opened with the same --set
  overrides, `site.finetune`), with model.dtype auto (float32 on this CPU);
- Trainer: AutoModelForCausalLM.from_pretrained(dtype=float32) + peft LoRA + transformers.Trainer
  on the same tokenized examples (response-only labels), batch, steps, learning rate (constant),
  threads and LoRA (r=16 on q_proj/v_proj);

each with gradient checkpointing off and on. Reported per run: memory while loading (peak RSS
during the load minus the RSS before it; and the peak of anonymous memory alone, as RSS also counts
the page cache of the memory-mapped checkpoint), peak RSS of the process, seconds per optimizer step
(training loop only, loading excluded). Plus a load-only run at model.dtype=bfloat16 (the
checkpoint's own dtype), to compare loading memory with the checkpoint's bytes.

    python benchmarks/scale.py [--workdir /tmp/fedbip-scale] [--steps 3] [--batch-size 4]
                               [--max-length 64] [--threads N] [--json out.json]
    python benchmarks/scale.py --hidden 64 --layers 2 --intermediate 128 --heads 4 --kv-heads 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CLIENT = "copy"


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Peak anonymous memory (RssAnon: the process's own allocations, not the page cache of the
    memory-mapped checkpoint, which RSS also counts) while a block runs, sampled every 5 ms."""

    def __enter__(self) -> "AnonPeak":
        import threading

        self.base, self.peak, self._stop = self.read(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def read() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            self._stop.wait(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def increment(self) -> float:
        return self.peak - self.base


def peak_mb() -> float:
    """Peak resident set size of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(workdir: Path, a: argparse.Namespace) -> dict:
    """The data, the workspace and the random bf16 decoder (skipped when already there with this shape)."""
    sys.path.insert(0, str(ROOT / "examples" / "multitask"))
    from make_data import vocabulary

    shape = {"hidden": a.hidden, "layers": a.layers, "intermediate": a.intermediate, "heads": a.heads,
             "kv_heads": a.kv_heads}
    model = workdir / "model"
    stamp = model / "fedbip_shape.json"
    if not (workdir / "fedbip.yaml").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples/multitask/make_data.py"), str(workdir)], check=True,
                       stdout=subprocess.DEVNULL)
        import re

        cfg_path = workdir / "fedbip.yaml"  # one rank for all: the round-0 adapters need one model only
        cfg_path.write_text(re.sub(r"\n *lora_(r|alpha): [^\n]*", "", cfg_path.read_text()))
    if not stamp.is_file() or json.loads(stamp.read_text()) != shape:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from fedbip_cli.testing.tiny_models import build_tiny_llama

        build_tiny_llama(model, vocabulary())  # the word-level tokenizer (its tiny model is replaced below)
        tiny = LlamaConfig.from_pretrained(model)
        cfg = LlamaConfig(vocab_size=tiny.vocab_size, hidden_size=a.hidden, intermediate_size=a.intermediate,
                          num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                          max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=0)
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: never a float32 copy of 700M parameters
        try:
            big = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        big.save_pretrained(model)
        stamp.write_text(json.dumps(shape))
        del big
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    from safetensors import safe_open

    params = 0
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n = 1
                for d in st.get_slice(k).get_shape():
                    n *= d
                params += n
    return {"checkpoint_bytes": weights, "parameters": params, "shape": shape}


def settings(a: argparse.Namespace, checkpointing: bool) -> list[str]:
    """The --set overrides of the fedbip run (and the values the Trainer run copies)."""
    return [f"training.max_steps={a.steps}", f"training.batch_size={a.batch_size}",
            f"model.max_length={a.max_length}", "lora.r=16", "lora.alpha=32", "lora.init=peft",
            f"training.learning_rate={a.lr}", f"training.gradient_checkpointing={str(checkpointing).lower()}",
            f"training.threads={a.threads}"]


def child_fedbip(workdir: Path, a: argparse.Namespace, checkpointing: bool, dtype: str, train: bool) -> dict:
    """In this process: open the workspace as `fedbip finetune --set ...` does, load, fine-tune."""
    import peft  # noqa: F401  (imported before the baseline, as the Trainer child does)
    import torch
    import transformers  # noqa: F401

    from fedbip_cli.cli.common import open_workspace
    from fedbip_cli.steps import site

    ws = open_workspace(workdir, settings(a, checkpointing) + [f"model.dtype={dtype}"])
    rt = site.SiteRuntime(ws)
    rt.split(CLIENT, "train")
    _ = rt.task.processor  # load the tokenizer before the measurement starts
    torch.set_num_threads(a.threads)
    before, t0 = rss_mb(), time.perf_counter()
    with AnonPeak() as anon:
        cm = rt.model_for(CLIENT)
    out = {"load_seconds": time.perf_counter() - t0, "rss_before_load_mb": before,
           "load_peak_mb": peak_mb(), "load_increment_mb": peak_mb() - before,
           "load_anon_increment_mb": anon.increment,
           "base_dtype": str(next(cm.model.base_model.parameters()).dtype),
           "lora_dtype": str(next(p for n, p in cm.model.named_parameters() if "lora_A" in n).dtype)}
    if train:
        info = site.finetune(ws, CLIENT, 0, runtime=rt, force=True)
        out |= {"steps": info["steps"], "train_seconds": info["seconds"],
                "seconds_per_step": info["seconds"] / info["steps"], "final_loss": info["final_loss"]}
    return out | {"peak_rss_mb": peak_mb()}


def child_trainer(workdir: Path, a: argparse.Namespace, checkpointing: bool) -> dict:
    """In this process: the plain transformers + peft + Trainer run with the same settings."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from fedbip_cli.cli.common import open_workspace
    from fedbip_cli.client.loading import quiet_transformers
    from fedbip_cli.steps import site

    quiet_transformers()
    ws = open_workspace(workdir, settings(a, checkpointing))
    rt = site.SiteRuntime(ws)
    data, tok = rt.split(CLIENT, "train"), rt.task.processor  # the same tokens as the fedbip run
    rows = []
    for ids, start in zip(data.input_ids, data.prompt_lengths):
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * start + ids[start:]})
    torch.set_num_threads(a.threads)
    before, t0 = rss_mb(), time.perf_counter()
    with AnonPeak() as anon:
        model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    out = {"load_seconds": time.perf_counter() - t0, "rss_before_load_mb": before, "load_peak_mb": peak_mb(),
           "load_increment_mb": peak_mb() - before, "load_anon_increment_mb": anon.increment}
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"]))
    if checkpointing:
        model.enable_input_require_grads()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                                 learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                                 optim="adamw_torch", seed=0, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, disable_tqdm=True,
                                 gradient_checkpointing=checkpointing,
                                 gradient_checkpointing_kwargs={"use_reentrant": False},
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        metrics = trainer.train().metrics
    seconds = float(metrics["train_runtime"])
    return out | {"steps": a.steps, "train_seconds": seconds, "seconds_per_step": seconds / a.steps,
                  "final_loss": float(metrics.get("train_loss", float("nan"))), "peak_rss_mb": peak_mb()}


def run_child(kind: str, a: argparse.Namespace, *extra: str, script: str = __file__,
              skip: tuple[str, ...] = ("child", "json", "gc", "dtype")) -> dict:
    """One measured run of `script --child kind` in a fresh process (its peak RSS is its own), with the
    options of `a` but `skip`; returns its JSON line."""
    cmd = [sys.executable, script, "--child", kind, *extra] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in skip and v is not None]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fedbip-scale"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gc", default="false", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        gc = a.gc == "true"
        if a.child == "trainer":
            out = child_trainer(a.workdir, a, gc)
        else:
            out = child_fedbip(a.workdir, a, gc, a.dtype, train=a.child == "fedbip")
        print(json.dumps(out), flush=True)
        return

    results: dict = {"load_before": os.getloadavg()[0], "steps": a.steps, "batch_size": a.batch_size,
                     "max_length": a.max_length, "threads": a.threads}
    results |= build(a.workdir, a)
    ckpt_mb = results["checkpoint_bytes"] / 2**20
    print(f"model: {results['parameters'] / 1e6:.0f}M parameters, checkpoint {ckpt_mb:.0f} MB (bf16)", flush=True)
    runs = {}
    for gc in ("false", "true"):
        for kind in ("trainer", "fedbip"):
            name = f"{kind} checkpointing={'on' if gc == 'true' else 'off'}"
            runs[name] = r = run_child(kind, a, f"--gc={gc}")
            print(f"{name:>26}: loading +{r['load_increment_mb']:.0f} MB RSS ({r['load_increment_mb'] / ckpt_mb:.2f}x "
                  f"checkpoint; anonymous +{r['load_anon_increment_mb']:.0f} MB, "
                  f"{r['load_anon_increment_mb'] / ckpt_mb:.2f}x), peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{r['seconds_per_step']:.1f} s/step, "
                  f"final loss {r['final_loss']:.3f}", flush=True)
    runs["fedbip load only, model.dtype=bfloat16"] = r = run_child("load", a, "--dtype=bfloat16")
    print(f"fedbip load at bfloat16: +{r['load_increment_mb']:.0f} MB RSS ({r['load_increment_mb'] / ckpt_mb:.2f}x "
          f"checkpoint; anonymous +{r['load_anon_increment_mb']:.0f} MB), base {r['base_dtype']}, "
          f"LoRA {r['lora_dtype']}", flush=True)
    results["runs"] = runs
    results["load_after"] = os.getloadavg()[0]
    print(f"torch threads {a.threads}; load average before {results['load_before']:.1f}, "
          f"after {results['load_after']:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
