"""fedbip.yaml: the schema as dataclasses, loaded with strict validation (key paths in every error).

The schema is the single source of truth: `fedbip init` writes a commented template, the loader
rejects unknown keys and wrong types naming the key path (`training.batch_size`), and command-line
flags override single values through `override`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.errors import UserError

CONFIG_FILE = "fedbip.yaml"
_INT_LIMIT = 2 ** 63


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """Folder of a Hugging Face model; null = the packaged model of the task type (all-MiniLM-L6-v2 for
    text-classification, SmolLM2-135M-Instruct for causal-lm)."""
    gguf_file: Optional[str] = None
    """A GGUF checkpoint (path relative to the workspace) to use as the base: dequantized once into a
    cached safetensors folder. Set it or model.path, not both."""
    name: Optional[str] = None
    """Hub id (or any portable name) adapters record as base_model_name_or_path; null = derived from
    the model (packaged MiniLM's hub id, a hub-cache folder's id, config.json's name, the folder's name)."""
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 128
    device: str = "auto"
    """auto (CUDA if available, then MPS, else CPU) or an explicit torch device: cpu, cuda, cuda:1, mps."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype the base model is loaded and computed in; auto = bfloat16 on a GPU that supports it, else
    float32. LoRA factors and heads stay float32 whatever this is."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA-style base quantization through bitsandbytes (nf4 + double quantization; needs CUDA and
    bitsandbytes: `pip install bitsandbytes`, or the `quantization` extra)."""


@dataclass
class TaskConfig:
    type: Literal["text-classification", "causal-lm", "image-classification"] = "text-classification"
    """What the clients learn; each type lives in fedbip_cli/client/tasks/ (docs/tasks.md)."""
    text_field: str = "text"
    label_field: str = "label"
    labels: Optional[list[str]] = None
    """The label set in order; null = collected from the clients' training files into labels.json."""
    task_field: Optional[str] = None
    """Field naming each example's task, for clients holding several tasks (TAP's per-task gating)."""
    prompt_field: str = "prompt"
    """causal-lm: field of the prompt (rows with `instruction`/`input`/`output` are read Alpaca-style)."""
    response_field: str = "response"
    prompt_template: str = "### Instruction:\n{prompt}\n\n### Response:\n"
    """causal-lm: the text the model sees before the response; {prompt} is the prompt or instruction."""
    prompt_template_with_input: str = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
    """causal-lm: the same for Alpaca rows with a non-empty `input`."""
    max_new_tokens: int = 32
    """causal-lm: bound on the tokens generated per example by `fedbip eval` (exact match, token F1)."""
    image_field: str = "images"
    """image-classification: the array of images in an .npz file (labels: label_field, else `labels`)."""


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Optional[list[str]] = None
    """null = the attention projections of the architecture (query/value, q_proj/v_proj, c_attn...)."""
    rslora: bool = False
    freeze_a: bool = False
    """FFA-LoRA: train B only, keep the shared initial A; factor-space aggregation is then exact."""
    init_seed: int = 0
    init: Literal["auto", "peft", "nested"] = "auto"
    """Initial A: peft's own, or nested (rank r's A = the first r rows of any larger rank's); auto =
    nested when a client sets its own lora_r, so mixed ranks share their leading components."""


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 16
    learning_rate: float = 5e-4
    head_learning_rate: Optional[float] = None
    weight_decay: float = 0.0
    seed: int = 0
    threads: Optional[int] = None
    gradient_accumulation_steps: int = 1
    """Micro-batches of batch_size per optimizer step (effective batch = batch_size x this)."""
    gradient_checkpointing: bool = False
    """Recompute the base's activations in the backward pass (non-reentrant): less memory, more compute."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule over each round's optimizer steps, after the warm-up."""
    warmup_steps: Optional[int] = None
    """Linear warm-up from 0 over this many optimizer steps (or set warmup_ratio; not both)."""
    warmup_ratio: Optional[float] = None
    """Warm-up as a fraction of the round's optimizer steps."""
    max_grad_norm: Optional[float] = None
    """Clip the gradient's global L2 norm to this (1.0 is the usual choice); null = no clipping."""


@dataclass
class AggregationConfig:
    """`aggregation:`: strategy, space and clipping; every other key is a strategy setting, declared (type,
    default, range, help) by the strategy that takes it (core.strategies, listed by `fedbip strategies`)."""

    strategy: str = "fedbip"
    space: Literal["factor", "delta"] = "factor"
    """Space of task vectors, similarities and sums: factor (elementwise on A, B) or delta (exact ΔW = s·B·A)."""
    clip_factor: Optional[float] = 3.0
    """Clip task vectors to this multiple of the round's median norm (poisoning defence); null = off."""
    settings: dict[str, Any] = field(default_factory=lambda: default_settings())
    """Every strategy setting (the declared default unless `aggregation:` sets it), each checked on setting."""

    @classmethod
    def from_mapping(cls, raw: dict, where: str, source: str) -> "AggregationConfig":
        own = {k: v for k, v in raw.items() if k in OWN_AGGREGATION_KEYS}
        agg = _build_fields(cls, own, where, source)
        for key, value in raw.items():
            if key not in OWN_AGGREGATION_KEYS:
                agg.set_setting(str(key), value, f"{source}: {where}.{_printable(key)}")
        from fedbip_cli.core.strategies.registry import CATALOGUE

        if agg.strategy not in CATALOGUE:
            raise UserError(f"{source}: {where}.strategy: unknown strategy {agg.strategy!r} "
                            f"(choose one of {', '.join(CATALOGUE)})")
        return agg

    def set_setting(self, key: str, value: Any, where: str) -> None:
        """Set one strategy setting, checked by the Param that declares it."""
        from fedbip_cli.core.strategies.registry import declared_params

        params = declared_params()
        if key not in params:
            known = [*OWN_AGGREGATION_KEYS, *params]
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(known)}; "
                            f"`fedbip strategies` lists each strategy's settings)")
        self.settings[key] = params[key].check(value, where)

    def resolve_space(self, flag: str | None = None) -> str:
        """The space a step computes in: the `--space` flag when given, else `space` (checked when loaded)."""
        if flag is None:
            return self.space
        from fedbip_cli.core.files.taskvec import check_space

        return check_space(flag)

    def options_for(self, strategy: str | None = None) -> dict[str, Any]:
        """The settings of this file that `strategy` (default: the configured one) declares."""
        from fedbip_cli.core.strategies.registry import strategy_class

        cls = strategy_class(strategy or self.strategy)
        return {p.name: self.settings[p.name] for p in cls.params if p.name in self.settings}

    def make_strategy(self, strategy: str | None = None):
        """The strategy `strategy` (default: the configured one) with this file's settings for it."""
        from fedbip_cli.core.strategies.registry import make_strategy

        return make_strategy(strategy or self.strategy, **self.options_for(strategy))


OWN_AGGREGATION_KEYS = ("strategy", "space", "clip_factor")


def default_settings() -> dict[str, Any]:
    from fedbip_cli.core.strategies.registry import declared_params

    return {name: p.default for name, p in declared_params().items()}


@dataclass
class TapConfig:
    """TAP's client stages (DESIGN §2); defaults are TAP's own (FLAVA setting, text classification)."""

    margin: float = 0.01
    margins: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    kd_weight: float = 1.0
    """TAP uses 2e-3, x500 for text classification."""
    distill_steps: int = 50
    distill_batch_size: int = 32
    distill_learning_rate: Optional[float] = None
    """null = training.learning_rate."""
    distill: bool = True
    """Whether `fedbip simulate` runs the distillation stage after the last round (ablation switch)."""


@dataclass
class PrivacyConfig:
    enabled: bool = False
    """Clip each task vector to clip_norm and add Gaussian noise before it leaves the site."""
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5


@dataclass
class ClientConfig:
    train: str
    validation: Optional[str] = None
    test: Optional[str] = None
    lora_r: Optional[int] = None
    """This client's own LoRA rank (null = lora.r); mixed ranks aggregate by docs/tasks.md's rule."""
    lora_alpha: Optional[float] = None
    """This client's own LoRA alpha (null = lora.alpha)."""
    max_examples: Optional[int] = None
    """The most training examples this site declares; a task vector claiming more is counted with this
    many (reported in weights.json as capped_examples). null = bounded only by 10^12."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tap: TapConfig = field(default_factory=TapConfig)
    clients: dict[str, ClientConfig] = field(default_factory=dict)

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


def _printable(key: Any, limit: int = 80) -> str:
    """A key (or message) from the YAML as it may appear in a one-line error: escaped, shortened."""
    text = str(key).encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _OutOfRange(UserError):
    """A value of the right type but outside what any type of a union could hold (NaN, overflow)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, source)
            except _OutOfRange:
                raise
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, f"{where}.{_printable(k)}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT <= value < _INT_LIMIT:
                raise _OutOfRange(f"{source}: {where}: {value} is out of range (|value| < 2**63)")
            return value
        raise bad
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads 5e-4 as a string
            except ValueError:
                pass
        if number is None:
            raise bad
        try:
            number = float(number)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):  # .nan, .inf or an integer too large for a float
            raise _OutOfRange(f"{source}: {where}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {where or 'top level'}: expected a mapping, got {raw!r}")
    if hasattr(cls, "from_mapping"):  # a section with keys declared elsewhere (aggregation: strategy settings)
        return cls.from_mapping(raw, where, source)
    return _build_fields(cls, raw, where, source)


def _build_fields(cls: type, raw: dict, where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            path = f"{where}.{_printable(key)}" if where else _printable(key)
            raise UserError(f"{source}: unknown key {path!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], path, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: missing required key {path!r}")
    return cls(**kwargs)


def parse_config(raw: Any, source: str = CONFIG_FILE) -> Config:
    """Validate a parsed YAML document into a Config."""
    cfg = _build(Config, raw, "", source)
    for name, cc in cfg.clients.items():
        check_client_name(name, f"{source}: clients")
        if cc.lora_r is not None and cc.lora_r <= 0:
            raise UserError(f"{source}: clients.{name}.lora_r: must be a positive integer, got {cc.lora_r}")
        if cc.max_examples is not None and cc.max_examples <= 0:
            raise UserError(f"{source}: clients.{name}.max_examples: must be a positive integer, got {cc.max_examples}")
        if cc.lora_alpha is not None and cc.lora_alpha <= 0:
            raise UserError(f"{source}: clients.{name}.lora_alpha: must be > 0, got {cc.lora_alpha}")
    check_ranges(cfg, source)
    check_task(cfg, source)
    check_training(cfg.training, source)
    check_model(cfg.model, source)
    return cfg


# key path -> (the rule it must satisfy, in words; the test). Every number is already finite (_convert);
# null (None) values of optional keys pass. Keys added to the schema may add a row here. Strategy
# settings (aggregation: keys other than strategy, space, clip_factor) are checked by their own
# declarations (core/strategies/params.py).
RANGES: dict[str, tuple[str, Any]] = {
    "model.max_length": (">= 2 and <= 1048576", lambda v: 2 <= v <= 1 << 20),
    "lora.r": ("> 0 and <= 65536", lambda v: 0 < v <= 1 << 16),
    "lora.alpha": ("> 0", lambda v: v > 0),
    "lora.dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "training.epochs": ("> 0", lambda v: v > 0),
    "training.max_steps": ("> 0", lambda v: v > 0),
    "training.batch_size": ("> 0 and <= 1048576", lambda v: 0 < v <= 1 << 20),
    "training.learning_rate": ("> 0", lambda v: v > 0),
    "training.head_learning_rate": ("> 0", lambda v: v > 0),
    "training.weight_decay": (">= 0", lambda v: v >= 0),
    "training.seed": (">= 0", lambda v: v >= 0),
    "training.threads": ("> 0 and <= 4096", lambda v: 0 < v <= 4096),
    "aggregation.clip_factor": ("> 0 (null turns clipping off)", lambda v: v > 0),
    "tap.temperature": ("> 0", lambda v: v > 0),
    "tap.kd_weight": (">= 0", lambda v: v >= 0),
    "tap.distill_steps": (">= 0", lambda v: v >= 0),
    "tap.distill_batch_size": ("> 0", lambda v: v > 0),
    "tap.distill_learning_rate": ("> 0", lambda v: v > 0),
    "privacy.clip_norm": ("> 0", lambda v: v > 0),
    "privacy.noise_multiplier": ("> 0", lambda v: v > 0),
    "privacy.delta": ("in (0, 1)", lambda v: 0 < v < 1),
}


def check_ranges(cfg: Config, source: str) -> None:
    """Every numeric setting within its range (RANGES): a value out of range is one line naming the key."""
    for path, (rule, ok) in RANGES.items():
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and not ok(value):
            raise UserError(f"{source}: {path}: must be {rule}, got {value!r}")


def check_model(model: ModelConfig, source: str) -> None:
    """model.device must name a torch device type fedbip can place a model on."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", model.device):
        raise UserError(f"{source}: model.device: expected auto, cpu, mps, cuda or cuda:N, got {model.device!r}")
    if model.quantization != "none" and model.dtype == "float32":
        raise UserError(f"{source}: model.quantization: {model.quantization} computes in bfloat16 or float16; "
                        f"model.dtype float32 does not fit (use auto, bfloat16 or float16)")


def check_training(tc: TrainingConfig, source: str) -> None:
    """Ranges of the training settings (types are checked by the schema)."""
    for key in ("batch_size", "gradient_accumulation_steps"):
        if getattr(tc, key) <= 0:
            raise UserError(f"{source}: training.{key}: must be positive, got {getattr(tc, key)}")
    if tc.max_steps is not None and tc.max_steps <= 0:
        raise UserError(f"{source}: training.max_steps: must be positive or null, got {tc.max_steps}")
    if tc.warmup_steps is not None and tc.warmup_ratio is not None:
        raise UserError(f"{source}: training.warmup_steps and training.warmup_ratio: set one of them, not both")
    if tc.warmup_steps is not None and tc.warmup_steps < 0:
        raise UserError(f"{source}: training.warmup_steps: must be >= 0, got {tc.warmup_steps}")
    if tc.warmup_ratio is not None and not 0 <= tc.warmup_ratio < 1:
        raise UserError(f"{source}: training.warmup_ratio: must be in [0, 1), got {tc.warmup_ratio}")
    if tc.max_grad_norm is not None and not tc.max_grad_norm > 0:
        raise UserError(f"{source}: training.max_grad_norm: must be positive or null, got {tc.max_grad_norm}")


def check_task(cfg: Config, source: str) -> None:
    """Settings that only make sense together with task.type."""
    task = cfg.task
    if task.type == "image-classification" and cfg.model.path is None and cfg.model.gguf_file is None:
        raise UserError(f"{source}: model.path: task.type {task.type} needs a model folder "
                        f"(no vision model ships in a package)")
    if cfg.model.path is not None and cfg.model.gguf_file is not None:
        raise UserError(f"{source}: model.gguf_file: set model.path or model.gguf_file, not both")
    if task.max_new_tokens <= 0:
        raise UserError(f"{source}: task.max_new_tokens: must be positive, got {task.max_new_tokens}")
    for key, needed in (("prompt_template", ("prompt",)), ("prompt_template_with_input", ("prompt", "input"))):
        check_template(getattr(task, key), needed, f"{source}: task.{key}")


def check_template(template: str, needed: tuple[str, ...], where: str) -> None:
    """A prompt template may use {prompt} and {input} only, and must use those in `needed`."""
    import string

    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UserError(f"{where}: malformed template {template!r}: {e}") from None
    unknown = used - {"prompt", "input"}
    if unknown or not set(needed) <= used:
        raise UserError(f"{where}: template must use {', '.join('{' + n + '}' for n in needed)} and no other "
                        f"placeholder, got {template!r}")


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
        raise UserError(f"{path}: YAML error{where}: {_printable(problem, 200)}") from None
    return parse_config(raw, str(path))


def override(cfg: Config, dotted: str, value: Any, source: str = "--set") -> None:
    """Set one value by key path (`training.epochs`), converting and checking its type."""
    parts = dotted.split(".")
    obj: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise UserError(f"{source}: unknown key {dotted!r}")
        obj = getattr(obj, part)
    last = parts[-1]
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if isinstance(obj, AggregationConfig) and last not in OWN_AGGREGATION_KEYS:
        obj.set_setting(last, value, f"{source}: {dotted}")
        return
    if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
        raise UserError(f"{source}: unknown key {dotted!r}")
    hint = typing.get_type_hints(type(obj))[last]
    setattr(obj, last, _convert(value, hint, dotted, source))
    check_ranges(cfg, source)
    if obj is cfg.training:
        check_training(cfg.training, source)
    elif obj is cfg.model:
        check_model(cfg.model, source)
