"""Loading pre-trained models and processors through transformers, quietly and offline, at the device,
dtype and quantization of `model.device` / `model.dtype` / `model.quantization`.

The base is loaded straight into its final dtype and device (`dtype=` and a device map), so a bf16
checkpoint is never materialized in float32 first; 4-bit and 8-bit bases go through bitsandbytes,
QLoRA style. Where a setting cannot be honoured here (no CUDA, no bitsandbytes), one clear line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedbip_cli.client.gguf_base import cached_folder
from fedbip_cli.core.files.safetensors_io import read_header, read_into
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.model_path import gguf_source, resolve_model_path

DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def base_folder(cfg: Any) -> Path:
    """The model folder of a config's base: model.path, the cached dequantized folder of a GGUF base
    (model.gguf_file, or the packaged decoder for causal-lm; built on first use), else the packaged
    model of the task type."""

    gguf = gguf_source(cfg)
    if gguf is None:
        return resolve_model_path(cfg.model.path)

    return cached_folder(gguf)


def quiet_transformers() -> None:
    """No download attempts, progress bars or advisory warnings from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class Placement:
    """Where and how the base model lives: the resolved model.device, model.dtype and model.quantization."""

    device: torch.device
    dtype: torch.dtype
    quantization: str = "none"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Dtype of autocast regions in training and evaluation: half precision on a GPU, else none (the
        base computes in its own dtype; the CPU here has no fast bf16, so auto is float32 there)."""
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return self.dtype
        return None


def resolve_device(setting: str) -> torch.device:
    """`auto`: CUDA if available, then MPS, else CPU; an explicit device must exist on this machine."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError):
        raise UserError(f"model.device: {setting!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"model.device: {setting} asked for, but this torch sees no CUDA GPU "
                            f"(torch {torch.__version__}); use auto or cpu")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UserError(f"model.device: {setting}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"model.device: {setting} asked for, but MPS is not available here; use auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"model.device: {setting!r}: fedbip places models on cpu, cuda or mps")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a CUDA GPU that supports it, else float32 (CPU and MPS compute bf16 slowly)."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if setting not in DTYPES:
        raise UserError(f"model.dtype: expected auto, {', '.join(DTYPES)}, got {setting!r}")
    return DTYPES[setting]


def check_quantization(mode: str, device: torch.device) -> None:
    """4bit/8bit need bitsandbytes and a CUDA device: refuse with one line naming what is missing."""
    if mode == "none":
        return
    if mode not in ("4bit", "8bit"):
        raise UserError(f"model.quantization: expected none, 4bit or 8bit, got {mode!r}")
    missing = []
    try:
        import bitsandbytes  # noqa: F401  (optional: the [quantization] extra; only checked for)
    except ImportError:
        missing.append("bitsandbytes (pip install bitsandbytes)")
    if device.type != "cuda":
        missing.append(f"a CUDA GPU (model.device resolves to {device})")
    if missing:
        raise UserError(f"model.quantization: {mode} needs {' and '.join(missing)}; set model.quantization: none")


def resolve_placement(model_cfg: Any) -> Placement:
    """The Placement of a ModelConfig (model.device, model.dtype, model.quantization), checked."""
    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    check_quantization(model_cfg.quantization, device)
    return Placement(device, dtype, model_cfg.quantization)


def dtype_keyword() -> str:
    """`dtype` on transformers >= 4.56, `torch_dtype` before (the old name is deprecated in 5)."""
    # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def pretrained_kwargs(placement: Placement, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained` that load the weights once, at the final dtype and device;
    modules named in `keep` (a classification head) are never quantized."""
    kwargs: dict[str, Any] = {dtype_keyword(): placement.dtype}
    if placement.device.type != "cpu":
        kwargs["device_map"] = {"": str(placement.device)}  # straight onto the device, shard by shard
    if placement.quantization != "none":
        # lazy: transformers (~1.5 s after torch), only when a model or tokenizer loads
        from transformers import BitsAndBytesConfig

        if placement.quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=placement.dtype, llm_int8_skip_modules=list(keep) or None)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True,
                                                               llm_int8_skip_modules=list(keep) or None)
    return kwargs


def load_pretrained(auto_class: Any, path: Any, placement: Placement, what: str, keep: tuple[str, ...] = (),
                    **extra: Any) -> Any:
    """`auto_class.from_pretrained(path)` at `placement`, in eval mode; a bad folder is one UserError line.
    Returns what from_pretrained returns (the model, or (model, info) with `output_loading_info=True`)."""
    quiet_transformers()
    half = half_checkpoint(path) if placement.device.type == "cpu" and placement.dtype == torch.float32 else None
    try:
        if half is not None:  # memory-mapped at its own dtype (nothing read yet), then read up as float32
            loaded = auto_class.from_pretrained(path, **{dtype_keyword(): half}, **extra)
            upcast_from_files(loaded[0] if isinstance(loaded, tuple) else loaded, Path(path))
        else:
            loaded = auto_class.from_pretrained(path, **pretrained_kwargs(placement, keep), **extra)
    except (OSError, ValueError) as e:
        raise UserError(f"model.path: cannot load {what} from {path}: {str(e).splitlines()[0]}") from None
    (loaded[0] if isinstance(loaded, tuple) else loaded).eval()  # (model, info) with output_loading_info
    return loaded


def half_checkpoint(path: Any) -> torch.dtype | None:
    """bfloat16/float16 when the folder's config.json says its weights are (and they are safetensors)."""

    folder = Path(path)
    try:
        doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dtype = doc.get("dtype") or doc.get("torch_dtype")
    if dtype not in ("bfloat16", "float16") or not any(folder.glob("*.safetensors")):
        return None
    return DTYPES[dtype]


@torch.no_grad()
def upcast_from_files(model: torch.nn.Module, folder: Path) -> int:
    """Make every parameter float32 by reading it from the checkpoint with positioned reads into a new
    float32 tensor, so the memory-mapped half-precision pages are never touched: loading a bf16
    checkpoint for float32 compute peaks at the float32 model, not at it plus the checkpoint (which
    `from_pretrained(dtype=float32)` maps and reads). A parameter not found under its name (or its
    base-model prefix) with the same shape is cast instead. Returns how many were read from files."""

    where = {}
    for f in sorted(folder.glob("*.safetensors")):
        header = read_header(f)
        where.update({name: header for name in header.tensors})
    prefix = getattr(model, "base_model_prefix", "")
    read = 0
    for name, p in model.named_parameters():
        key = next((k for k in (name, f"{prefix}.{name}") if k in where), None)
        if key is not None and tuple(where[key].tensors[key].shape) == tuple(p.shape):
            new = torch.empty(p.shape, dtype=torch.float32)
            read_into(where[key], key, new.numpy(), check_finite=False)
            read += 1
        else:
            new = p.data.float()
        p.data = new
    for module in model.modules():
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf.is_floating_point() and buf.dtype != torch.float32:
                setattr(module, bname, buf.float())
    if hasattr(model, "config"):
        model.config.dtype = torch.float32
    return read
