"""A GGUF checkpoint as a base model: dequantized once into a cached safetensors folder.

transformers reads GGUF (through the `gguf` package) by dequantizing every tensor to float32, which
takes 15-25 s for SmolLM2-135M on two cores, and its GGUF-loaded models refuse `save_pretrained`. So
the first use writes the dequantized weights, config, generation config and tokenizer as a plain
model folder, and every later step memory-maps that folder in a second or two:

    <cache_root()>/gguf/<sha256 of the GGUF file, 32 hex>/
        config.json  generation_config.json  model.safetensors  tokenizer.json ...  fedbip-gguf.json

Keyed by the file's content hash, so a changed file (same name) never meets a stale folder, and a
moved workspace or cache (`$FEDBIP_CACHE`) still finds it. Built under a temporary name and renamed
into place while holding a lock, so concurrent first uses build it once and nobody sees half of it.
A file that is not GGUF, is cut short, or holds an architecture transformers cannot load from GGUF is
one UserError line, and nothing is left in the cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedbip_cli.core.files.atomic import atomic_dir, current_umask, write_json
from fedbip_cli.core.files.locks import file_lock
from fedbip_cli.core.files.targets import allow
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.model_path import cache_root, gguf_fingerprint

MARKER = "fedbip-gguf.json"
"""Written last into the cached folder: which GGUF file it came from, and by which transformers."""

_BUILT: dict[str, Path] = {}
"""Cached folders found or built by this process, by fingerprint (steps ask for the folder often)."""


def cached_folder(gguf: str | Path) -> Path:
    """The dequantized model folder of a GGUF file, built on first use (see the module docstring)."""

    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"model.gguf_file: {gguf}: no such file")
    fp = gguf_fingerprint(gguf)  # a finished entry of these very bytes: the file was checked when it was built
    if fp in _BUILT and is_complete(_BUILT[fp], fp):
        return _BUILT[fp]
    root = cache_root() / "gguf"
    folder = root / fp
    allow(cache_root())  # fedbip's own cache: a command may write there beside its workspace (core/files/targets.py)
    try:
        if not is_complete(folder, fp):
            check_gguf(gguf)
            root.mkdir(parents=True, exist_ok=True)
            with file_lock(root / f".{fp}.lock"):
                if not is_complete(folder, fp):  # another process may have built it while we waited
                    print(f"fedbip: dequantizing {gguf.name} once into {folder} (later steps load it from there)",
                          file=sys.stderr, flush=True)
                    with atomic_dir(folder) as tmp:
                        dequantize_into(gguf, tmp, fp)
    except OSError as e:
        raise UserError(f"{root}: cannot write the dequantized GGUF cache ({e.strerror or e}); "
                        f"set FEDBIP_CACHE to a writable folder") from None
    _BUILT[fp] = folder
    return folder


def is_complete(folder: Path, fp: str) -> bool:
    """Whether `folder` is a finished cache entry of the GGUF with fingerprint `fp`."""
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(doc, dict) and doc.get("fingerprint") == fp and (folder / "config.json").is_file()
            and all((folder / name).is_file() for name in doc.get("files", [])))


def check_gguf(path: Path) -> str:
    """The architecture of a GGUF file, after checking that it is one, whole, and of an architecture
    transformers' GGUF loader knows (its metadata is parsed; no tensor is read). UserError otherwise."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"model.gguf_file: {path}: cannot read ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise UserError(f"model.gguf_file: {path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        # lazy: gguf (the optional [llm] extra) and transformers
        from gguf import GGUFReader
    except ImportError:
        raise UserError("model.gguf_file: reading GGUF needs the gguf package (pip install 'fedbip[llm]')") from None
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    except Exception as e:  # noqa: BLE001 (the reader raises ValueError, KeyError, IndexError... on damaged headers)
        raise UserError(f"model.gguf_file: {path}: truncated or damaged GGUF file "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'bad header'})") from None
    if not ends or max(ends) > size:
        raise UserError(f"model.gguf_file: {path}: truncated GGUF file ({size} bytes; its tensors need "
                        f"{max(ends, default=0)})")
    field = reader.fields.get("general.architecture")
    try:
        arch = bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else ""
    except (IndexError, UnicodeDecodeError):
        arch = ""
    if not arch:
        raise UserError(f"model.gguf_file: {path}: no general.architecture in its metadata")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        load_gguf_checkpoint(str(path), return_tensors=False)
    except Exception as e:  # noqa: BLE001 (ValueError for unknown architectures; others for unmappable metadata)
        raise UserError(f"model.gguf_file: {path}: architecture {arch!r}: transformers cannot load it from GGUF "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return arch


def dequantize_into(gguf: Path, out: Path, fp: str) -> None:
    """Load the GGUF through transformers (float32), and write it to `out` as a model folder.

    The GGUF-loaded model cannot `save_pretrained`; its state dict can be saved as it is, less the
    output embedding when it is tied to the input one (as save_pretrained would)."""
    # lazy: torch and transformers, only when a GGUF file is first converted
    import torch
    from safetensors.torch import save_file

    from fedbip_cli.client.loading import quiet_transformers

    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # noqa: BLE001 (a file that passed check_gguf but holds what the loader cannot map)
        raise UserError(f"model.gguf_file: {gguf}: transformers cannot load it as a causal LM "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tied = getattr(model.config, "tie_word_embeddings", False)
    # the embeddings' weight parameters (an nn.Linear's, an nn.Embedding's; no output embedding: None)
    out_w = getattr(model.get_output_embeddings(), "weight", None)
    in_w = getattr(model.get_input_embeddings(), "weight", None)
    if (tied and isinstance(out_w, torch.Tensor) and isinstance(in_w, torch.Tensor)
            and out_w.data_ptr() == in_w.data_ptr()):
        for key in [k for k, v in state.items() if v.data_ptr() == out_w.data_ptr()
                    and not k.endswith("embed_tokens.weight")]:
            del state[key]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the folder holds plain float32 weights
    config.dtype = torch.float32
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    import transformers

    files = sorted(p.name for p in out.iterdir() if p.is_file())
    for name in files:  # safetensors writes 0600; the cache may be shared by a site's accounts
        os.chmod(out / name, 0o666 & ~current_umask())

    write_json(out / MARKER, {"fingerprint": fp, "source": gguf.name, "size": gguf.stat().st_size,
                              "transformers": transformers.__version__, "files": files})
