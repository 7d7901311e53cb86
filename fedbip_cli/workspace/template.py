"""The commented fedbip.yaml that `fedbip init` writes (kept equal to the schema's defaults by a test)."""

from __future__ import annotations

import json
import re
from typing import Any

from fedbip_cli.errors import UserError

TEMPLATE = """\
# fedbip federation config. Paths are relative to this folder.
# Every command reads it; flags such as --set training.epochs=2 override single values.

model:
  path: {model_path}          # Hugging Face model folder; null = the packaged model of task.type
  gguf_file: null             # or a GGUF checkpoint, dequantized once into a cached folder (not with path)
  name: null                  # hub id adapters record as their base model; null = derived (docs/deploy.md)
  pooling: mean               # mean (sentence-transformers models) | cls (AutoModelForSequenceClassification)
  max_length: 128             # tokens per example; longer texts are truncated
  device: auto                # auto (CUDA, then MPS, else CPU) | cpu | cuda | cuda:1 | mps
  dtype: auto                 # base model dtype: auto (bfloat16 on a GPU that has it, else float32) |
                              # bfloat16 | float16 | float32; LoRA factors and heads stay float32
  quantization: none          # none | 4bit (QLoRA: nf4, double quantization) | 8bit; needs CUDA and
                              # bitsandbytes (pip install bitsandbytes)

task:                         # docs/tasks.md: the task types, their data formats and keys
  type: text-classification   # text-classification | causal-lm | image-classification
  text_field: text            # field (JSONL) or column (CSV) holding the text
  label_field: label          # field or column holding the label (string or integer)
  labels: {labels}            # the label set in order; null = collected into labels.json by `fedbip labels`
  task_field: null            # field naming each example's task (clients with several tasks; TAP gating)
  # causal-lm: JSONL rows {{prompt, response}} or Alpaca {{instruction, input, output}}; loss on the response only
  prompt_field: prompt
  response_field: response
  prompt_template: "### Instruction:\\n{{prompt}}\\n\\n### Response:\\n"
  prompt_template_with_input: "### Instruction:\\n{{prompt}}\\n\\n### Input:\\n{{input}}\\n\\n### Response:\\n"
  max_new_tokens: 32          # bound on greedy generation in `fedbip eval` (exact match, token F1)
  # image-classification: a folder of class sub-folders of images, or an .npz of images + labels
  image_field: images         # the .npz array of images (labels: label_field, else `labels`)

lora:
  r: 8                        # LoRA rank
  alpha: 16.0                 # scale = alpha / r (alpha / sqrt(r) with rslora)
  dropout: 0.0
  target_modules: null        # null = the architecture's attention projections (query/value, q_proj/v_proj, c_attn)
  rslora: false
  freeze_a: false             # FFA-LoRA: train B only; factor-space aggregation is then exact
  init_seed: 0                # seed of the shared initial adapter (same at every site)
  init: auto                  # initial A: peft | nested (rank r = first r rows of larger ranks); auto = nested
                              # when a client sets its own lora_r (clients: name: {{train: ..., lora_r: 4}})

training:
  epochs: 1.0                 # passes over the client's training data per round
  max_steps: null             # or a fixed number of optimizer steps per round
  batch_size: 16
  learning_rate: 5.0e-4       # LoRA factors
  head_learning_rate: null    # classification head; null = learning_rate
  weight_decay: 0.0
  seed: 0
  threads: null               # torch threads while training (evaluation keeps torch's default); null = default
  gradient_accumulation_steps: 1  # micro-batches of batch_size per optimizer step
  gradient_checkpointing: false   # recompute activations in backward (non-reentrant): less memory
  lr_scheduler: constant      # constant | linear | cosine (decay over the round's steps, after warm-up)
  warmup_steps: null          # linear warm-up over this many optimizer steps (or warmup_ratio, not both)
  warmup_ratio: null          # warm-up as a fraction of the round's optimizer steps
  max_grad_norm: null         # clip the gradient's L2 norm (1.0 is usual); null = no clipping

aggregation:
  strategy: fedbip            # `fedbip strategies` lists them, with their settings and defaults
  space: factor               # factor: A, B elementwise | delta: exact ΔW = s·B·A, refactored to rank r
{strategy_settings}
  clip_factor: 3.0            # clip task vectors to 3 x the round's median norm (poisoning); null = off

tap:                          # TAP's client stages: `fedbip accept` and `fedbip distill`
  margin: 0.01                # replace the personal adapter iff loss(received) + margin < loss(personal)
  margins: {{}}                 # per-task margins, e.g. {{summarize: 0.005}}
  temperature: 1.0            # distillation temperature T
  kd_weight: 1.0              # w in CE + w * T^2 * KL(teacher || student)
  distill_steps: 50
  distill_batch_size: 32
  distill_learning_rate: null # null = training.learning_rate
  distill: true               # simulate: run distillation after the last round (false: gate only)

privacy:                      # opt-in client-level differential privacy (docs/reliability.md)
  enabled: false              # clip each task vector and add Gaussian noise before it leaves the site
  clip_norm: 1.0              # C: L2 norm bound of a task vector
  noise_multiplier: 1.0       # sigma: noise standard deviation is sigma * C
  delta: 1.0e-5               # the delta of the reported (epsilon, delta)

clients:{clients}
"""


def render(model_path: str | None = None, labels: list[str] | None = None, clients: dict[str, dict] | None = None,
           settings: dict[str, Any] | None = None) -> str:
    """The template with the given values filled in; `settings` sets other keys by path ("training.epochs")."""

    if clients:
        lines = []
        for name, files in clients.items():
            lines.append(f"  {name}:")
            lines += [f"    {k}: {v}" for k, v in files.items()]
        block = "\n" + "\n".join(lines)
    else:
        block = " {}                 # name: {train: data/name/train.jsonl, validation: ..., test: ...}"
    text = TEMPLATE.format(model_path=json.dumps(model_path) if model_path else "null",
                           labels=json.dumps(labels) if labels else "null", clients=block,
                           strategy_settings=strategy_settings())
    for dotted, value in (settings or {}).items():
        text = set_value(text, dotted, value)
    return text


def strategy_settings() -> str:
    """The `aggregation:` lines of every strategy setting, with default and help, from the strategies' own
    declarations (core.strategies), so the template never lists a setting no strategy reads."""
    from fedbip_cli.core.strategies.registry import all_strategies, declared_params

    lines = ["  # strategy settings, each read by the strategies named in its comment (`fedbip strategies`):"]
    for name, p in declared_params().items():
        owners = [n for n, cls in all_strategies().items() if p in cls.params]
        head = f"  {name}: {json.dumps(p.default)}"
        lines.append(f"{head.ljust(29)} # {', '.join(owners)}: {p.help}")
    return "\n".join(lines)


def set_value(text: str, dotted: str, value: Any) -> str:
    """Replace the value of `section.key` in the template text, keeping its comment."""
    section, _, key = dotted.partition(".")
    lines = text.split("\n")
    current = None
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            current = line.split(":", 1)[0]
            continue
        m = re.match(rf"^(  {re.escape(key)}:)( *)(\S.*?)?(\s+#.*)?$", line)
        if current == section and m:
            head = f"{m.group(1)} {json.dumps(value)}"
            if m.group(4):
                col = m.start(4) + len(m.group(4)) - len(m.group(4).lstrip())
                head = f"{head.ljust(col - 1)} {m.group(4).strip()}"
            lines[i] = head
            return "\n".join(lines)
    raise UserError(f"fedbip.yaml template: no key {dotted!r}")
