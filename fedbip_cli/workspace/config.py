"""fedbip.yaml: the schema as dataclasses, one declaration per key, loaded with strict validation.

Each key is declared once, beside its field (`schema.key`: type, default, range or choices, help); from
those declarations the loader converts and checks values naming the key path (`training.batch_size`),
`validate` checks a whole config (from `parse_config` and from every `override` alike), and `fedbip init`
prints the commented template (template.py). Rules that tie several keys together are each section's
`check` method.
"""

from __future__ import annotations

import dataclasses
import re
import string
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml

from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.core.strategies.registry import CATALOGUE, declared_params, make_strategy, strategy_class
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.schema import OutOfRange, check_fields, convert, key, printable
from fedbip_cli.workspace.task_types import task_type, task_type_names

if TYPE_CHECKING:  # numpy: imported when a strategy is made, not with the config
    from fedbip_cli.core.strategies.base import Strategy

CONFIG_FILE = "fedbip.yaml"


@dataclass
class ModelConfig:
    """the frozen pre-trained base every site fine-tunes"""

    path: Optional[str] = key(None, "Hugging Face model folder; null = the packaged model of task.type "
                                    "(all-MiniLM-L6-v2 for text-classification, SmolLM2-135M-Instruct for causal-lm)")
    gguf_file: Optional[str] = key(None, "or a GGUF checkpoint (path relative to the workspace), dequantized once "
                                         "into a cached safetensors folder; set it or path, not both")
    name: Optional[str] = key(None, "hub id adapters record as their base model; null = derived (docs/deploy.md)")
    pooling: Literal["mean", "cls"] = key("mean", "mean (sentence-transformers models) | cls "
                                                  "(AutoModelForSequenceClassification's pooler)")
    max_length: int = key(128, "tokens per example; longer inputs are truncated", ge=2, le=1 << 20)
    device: str = key("auto", "auto (CUDA, then MPS, else CPU) | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = key(
        "auto", "base dtype: auto = bfloat16 on a GPU that has it, else float32; LoRA and heads stay float32")
    quantization: Literal["none", "4bit", "8bit"] = key(
        "none", "none | 4bit (QLoRA: nf4, double quantization) | 8bit; needs CUDA and bitsandbytes")

    def check(self, source: str) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise UserError(f"{source}: model.device: expected auto, cpu, mps, cuda or cuda:N, got "
                            f"{printable(repr(self.device))}")
        if self.quantization != "none" and self.dtype == "float32":
            raise UserError(f"{source}: model.quantization: {self.quantization} computes in bfloat16 or float16; "
                            f"model.dtype float32 does not fit (use auto, bfloat16 or float16)")
        if self.path is not None and self.gguf_file is not None:
            raise UserError(f"{source}: model.gguf_file: set model.path or model.gguf_file, not both")


@dataclass
class TaskConfig:
    """what the sites learn; each type lives in fedbip_cli/client/tasks/ (docs/tasks.md)"""

    type: str = key("text-classification", "the task type", choices=task_type_names)
    text_field: str = key("text", "field (JSONL) or column (CSV) holding the text")
    label_field: str = key("label", "field or column holding the label (string or integer)")
    labels: Optional[list[str]] = key(None, "the label set in order; null = collected into labels.json",
                                      unique=True)
    task_field: Optional[str] = key(None, "field naming each example's task (sites with several tasks; TAP gating)")
    prompt_field: str = key("prompt", "causal-lm: field of the prompt (Alpaca rows: instruction/input/output)")
    response_field: str = key("response", "causal-lm: field of the response (the loss covers it only)")
    prompt_template: str = key("### Instruction:\n{prompt}\n\n### Response:\n",
                               "causal-lm: the text before the response; {prompt} is the prompt")
    prompt_template_with_input: str = key("### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n",
                                          "causal-lm: the same for Alpaca rows with a non-empty input")
    max_new_tokens: int = key(32, "causal-lm: bound on the tokens `fedbip eval` generates per example",
                              gt=0, le=1 << 16)
    image_field: str = key("images", "image-classification: the .npz array of images (labels: label_field)")

    def check(self, source: str) -> None:
        for name, needed in (("prompt_template", ("prompt",)), ("prompt_template_with_input", ("prompt", "input"))):
            check_template(getattr(self, name), needed, f"{source}: task.{name}")


@dataclass
class LoraSettings:
    """the adapter every site trains"""

    r: int = key(8, "LoRA rank", gt=0, le=1 << 16)
    alpha: float = key(16.0, "scale = alpha / r (alpha / sqrt(r) with rslora)", gt=0)
    dropout: float = key(0.0, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: Optional[list[str]] = key(None, "null = the architecture's attention projections "
                                                    "(query/value, q_proj/v_proj, c_attn)", unique=True)
    rslora: bool = key(False, "rank-stabilized scale alpha / sqrt(r)")
    freeze_a: bool = key(False, "FFA-LoRA: train B only; factor-space aggregation is then exact")
    init_seed: int = key(0, "seed of the shared initial adapter (the same at every site)", ge=0)
    init: Literal["auto", "peft", "nested"] = key(
        "auto", "initial A: peft | nested (rank r = the first r rows of larger ranks); auto = nested when a site "
                "sets its own lora_r")


@dataclass
class TrainingConfig:
    """each site's fine-tuning in a round"""

    epochs: float = key(1.0, "passes over the site's training data per round", gt=0)
    max_steps: Optional[int] = key(None, "or a fixed number of optimizer steps per round", gt=0)
    batch_size: int = key(16, "examples per micro-batch", gt=0, le=1 << 20)
    learning_rate: float = key(5e-4, "learning rate of the LoRA factors", gt=0)
    head_learning_rate: Optional[float] = key(None, "classification head's; null = learning_rate", gt=0)
    weight_decay: float = key(0.0, "AdamW weight decay", ge=0)
    seed: int = key(0, "seed of the data order and dropout", ge=0)
    threads: Optional[int] = key(None, "torch threads while training (evaluation keeps torch's default); "
                                       "null = default", gt=0, le=4096)
    gradient_accumulation_steps: int = key(1, "micro-batches per optimizer step (effective batch = batch_size "
                                              "x this)", gt=0, le=1 << 20)
    gradient_checkpointing: bool = key(False, "recompute activations in backward (non-reentrant): less memory")
    lr_scheduler: Literal["constant", "linear", "cosine"] = key(
        "constant", "constant | linear | cosine (decay over the round's steps, after warm-up)")
    warmup_steps: Optional[int] = key(None, "linear warm-up over this many optimizer steps (or warmup_ratio)", ge=0)
    warmup_ratio: Optional[float] = key(None, "warm-up as a fraction of the round's optimizer steps", ge=0, lt=1)
    max_grad_norm: Optional[float] = key(None, "clip the gradient's L2 norm (1.0 is usual); null = no clipping",
                                         gt=0)

    def check(self, source: str) -> None:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise UserError(f"{source}: training.warmup_steps and training.warmup_ratio: set one of them, not both")


@dataclass
class AggregationConfig:
    """strategy, space and clipping; every other key is a strategy setting, declared (type, default, range,
    help) by the strategy that takes it (core.strategies, listed by `fedbip strategies`)"""

    strategy: str = key("fedbip", "`fedbip strategies` lists them, with their settings and defaults")
    space: Literal["factor", "delta"] = key("factor", "factor: A, B elementwise | delta: exact dW = s.B.A, "
                                                      "refactored to rank r")
    clip_factor: Optional[float] = key(3.0, "clip task vectors to this x the round's median norm (poisoning "
                                            "defence); null = off", gt=0)
    settings: dict[str, Any] = key(help="every strategy setting (declared default unless set), checked on setting",
                                   factory=lambda: default_settings(), template=False, allow_empty=True)

    @classmethod
    def from_mapping(cls, raw: dict, where: str, source: str) -> "AggregationConfig":
        own = {k: v for k, v in raw.items() if k in OWN_AGGREGATION_KEYS}
        agg = _build_fields(cls, own, where, source)
        for name, value in raw.items():
            if name not in OWN_AGGREGATION_KEYS:
                agg.set_setting(str(name), value, f"{source}: {where}.{printable(name)}")
        return agg

    def check(self, source: str) -> None:
        if self.strategy not in CATALOGUE:
            raise UserError(f"{source}: aggregation.strategy: unknown strategy {printable(repr(self.strategy))} "
                            f"(choose one of {', '.join(CATALOGUE)})")

    def set_setting(self, name: str, value: Any, where: str) -> None:
        """Set one strategy setting, checked by the Param that declares it."""

        params = declared_params()
        if name not in params:
            known = [*OWN_AGGREGATION_KEYS, *params]
            raise UserError(f"{where}: unknown key {printable(repr(name))} (known: {', '.join(known)}; "
                            f"`fedbip strategies` lists each strategy's settings)")
        self.settings[name] = params[name].check(value, where)

    def resolve_space(self, flag: str | None = None) -> str:
        """The space a step computes in: the `--space` flag when given, else `space` (checked when loaded)."""
        if flag is None:
            return self.space
        # lazy: numpy; reading the config needs none
        from fedbip_cli.core.files.taskvec import check_space

        return check_space(flag)

    def options_for(self, strategy: str | None = None) -> dict[str, Any]:
        """The settings of this file that `strategy` (default: the configured one) declares."""

        cls = strategy_class(strategy or self.strategy)
        return {p.name: self.settings[p.name] for p in cls.params if p.name in self.settings}

    def make_strategy(self, strategy: str | None = None) -> Strategy:
        """The strategy `strategy` (default: the configured one) with this file's settings for it."""

        return make_strategy(strategy or self.strategy, **self.options_for(strategy))


OWN_AGGREGATION_KEYS = ("strategy", "space", "clip_factor")


def default_settings() -> dict[str, Any]:
    return {name: p.default for name, p in declared_params().items()}


@dataclass
class TapConfig:
    """TAP's site stages, `fedbip accept` and `fedbip distill` (DESIGN §2); defaults are TAP's own"""

    margin: float = key(0.01, "replace the personal adapter iff loss(received) + margin < loss(personal)")
    margins: dict[str, float] = key(help="per-task margins, e.g. {summarize: 0.005}", factory=dict, allow_empty=True)
    temperature: float = key(1.0, "distillation temperature T", gt=0)
    kd_weight: float = key(1.0, "w in CE + w * T^2 * KL(teacher || student); TAP uses 2e-3 (x500 for text)", ge=0)
    distill_steps: int = key(50, "distillation optimizer steps", ge=0, le=1 << 30)
    distill_batch_size: int = key(32, "distillation batch size", gt=0, le=1 << 20)
    distill_learning_rate: Optional[float] = key(None, "null = training.learning_rate", gt=0)
    distill: bool = key(True, "simulate: run distillation after the last round (false: gate only)")


@dataclass
class PrivacyConfig:
    """opt-in site-level differential privacy (docs/reliability.md)"""

    enabled: bool = key(False, "clip each task vector and add Gaussian noise before it leaves the site")
    clip_norm: float = key(1.0, "C: L2 norm bound of a task vector", gt=0)
    noise_multiplier: float = key(1.0, "sigma: the noise standard deviation is sigma * C", gt=0)
    delta: float = key(1e-5, "the delta of the reported (epsilon, delta)", gt=0, lt=1)


@dataclass
class ClientConfig:
    """one site: its data files and, optionally, its own LoRA rank"""

    train: str = key(help="training data file or folder (relative to the workspace)")
    validation: Optional[str] = key(None, "validation split (TAP's gate uses it when present)")
    test: Optional[str] = key(None, "held-out split `fedbip eval` scores")
    lora_r: Optional[int] = key(None, "this site's own LoRA rank (null = lora.r); mixed ranks: docs/tasks.md",
                                gt=0, le=1 << 16)
    lora_alpha: Optional[float] = key(None, "this site's own LoRA alpha (null = lora.alpha)", gt=0)
    max_examples: Optional[int] = key(None, "the most training examples this site declares; a task vector "
                                            "claiming more counts as this many (null: bounded by 10^12)", gt=0)


@dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    aggregation: AggregationConfig = dataclasses.field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    tap: TapConfig = dataclasses.field(default_factory=TapConfig)
    clients: dict[str, ClientConfig] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_client(self, name: str) -> "Config":
        """This config with the client's own LoRA rank and alpha in `lora` (itself when it sets none)."""
        cc = self.clients.get(name)
        if cc is None or (cc.lora_r is None and cc.lora_alpha is None):
            return self
        lora = dataclasses.replace(self.lora, r=cc.lora_r if cc.lora_r is not None else self.lora.r,
                                   alpha=cc.lora_alpha if cc.lora_alpha is not None else self.lora.alpha)
        return dataclasses.replace(self, lora=lora)

    def nested_init(self) -> bool:
        """Whether initial LoRA A matrices are nested across ranks (lora.init, `auto` resolved)."""
        if self.lora.init == "auto":
            return any(c.lora_r is not None for c in self.clients.values())
        return self.lora.init == "nested"

    def check(self, source: str) -> None:
        if not task_type(self.task.type).packaged_model and self.model.path is None and self.model.gguf_file is None:
            raise UserError(f"{source}: model.path: task.type {self.task.type} needs a model folder "
                            f"(no packaged model serves it)")


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.name != "clients")
"""The top-level sections holding keys (clients: holds one ClientConfig per site)."""


def validate(cfg: Config, source: str = CONFIG_FILE) -> None:
    """Every key of `cfg` within its declaration, then the rules across keys; the first failure is one
    UserError line naming `source` and the key path. Run on every load and after every override."""
    for name in SECTIONS:
        section = getattr(cfg, name)
        check_fields(section, name, source)
        if hasattr(section, "check"):
            section.check(source)
    for site, cc in cfg.clients.items():
        check_client_name(site, f"{source}: clients")
        check_fields(cc, f"clients.{site}", source)
    cfg.check(source)


def check_template(template: str, needed: tuple[str, ...], where: str) -> None:
    """A prompt template may use {prompt} and {input} only, and must use those in `needed`."""
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UserError(f"{where}: malformed template {printable(repr(template))}: {e}") from None
    unknown = used - {"prompt", "input"}
    if unknown or not set(needed) <= used:
        raise UserError(f"{where}: template must use {', '.join('{' + n + '}' for n in needed)} and no other "
                        f"placeholder, got {printable(repr(template))}")


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {where or 'top level'}: expected a mapping, got {printable(repr(raw))}")
    if hasattr(cls, "from_mapping"):  # a section with keys declared elsewhere (aggregation: strategy settings)
        return cls.from_mapping(raw, where, source)
    return _build_fields(cls, raw, where, source)


def _build_fields(cls: type, raw: dict, where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "settings" or cls is not AggregationConfig}
    for name in raw:
        if name not in fields:
            path = f"{where}.{printable(name)}" if where else printable(name)
            raise UserError(f"{source}: unknown key {path!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], path, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: missing required key {path!r}")
    return cls(**kwargs)


def _convert(value: Any, tp: Any, path: str, source: str) -> Any:
    return convert(value, tp, path, source, lambda cls, raw, where: _build(cls, raw, where, source))


def parse_config(raw: Any, source: str = CONFIG_FILE) -> Config:
    """Validate a parsed YAML document into a Config."""
    cfg = _build(Config, raw, "", source)
    validate(cfg, source)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_config(path: str | Path) -> Config:
    """Read and validate fedbip.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config not found (run `fedbip init` to create a workspace)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read config: {e}") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: YAML error{where}: {printable(problem, 200)}") from None
    return parse_config(raw, str(path))


def override(cfg: Config, dotted: str, value: Any, source: str = "--set", *, parse: bool = True) -> None:
    """Set one value by key path (`training.epochs`), converted to the key's type, then `validate` the whole
    config; a value that fails leaves `cfg` as it was. A string is read as YAML first (`--set` text) unless
    `parse` is false: values that are already typed keep their text (a prompt template's newlines)."""
    parts = dotted.split(".")
    obj: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part) or isinstance(obj, AggregationConfig):
            raise UserError(f"{source}: unknown key {printable(repr(dotted))}")
        obj = getattr(obj, part)
        if isinstance(obj, dict):  # clients.<site>.<key>
            site = parts[len(parts) - 2] if len(parts) == 3 else None
            if site is None or site not in obj:
                raise UserError(f"{source}: unknown key {printable(repr(dotted))}")
            obj = obj[site]
            break
    last = parts[-1]
    typed = value
    if isinstance(value, str) and parse:
        try:
            typed = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if isinstance(obj, AggregationConfig) and last not in OWN_AGGREGATION_KEYS:
        obj.set_setting(last, typed, f"{source}: {dotted}")
        return
    names = {f.name for f in dataclasses.fields(obj)} - {"settings"} if dataclasses.is_dataclass(obj) else set()
    if last not in names:
        raise UserError(f"{source}: unknown key {printable(repr(dotted))}")
    hint = typing.get_type_hints(type(obj))[last]
    try:
        converted = _convert(typed, hint, dotted, source)
    except OutOfRange:
        raise
    except UserError:
        if not isinstance(value, str) or typed is value or hint not in (str, Optional[str]):
            raise
        converted = _convert(value, hint, dotted, source)  # a string key given text YAML reads otherwise ("# x")
    old = getattr(obj, last)
    setattr(obj, last, converted)
    try:
        validate(cfg, source)
    except UserError:
        setattr(obj, last, old)
        raise
