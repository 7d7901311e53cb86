"""The streaming safetensors reader/writer: interoperates with the safetensors library and rejects bad files."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.errors import UserError


def test_roundtrip_with_safetensors_library(tmp_path):
    arrays = {"w": np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32), "b": np.arange(4, dtype=np.float32)}
    safetensors_io.save(tmp_path / "x.safetensors", arrays, {"who": "me"}, dtypes={"b": "BF16"})
    theirs = load_file(str(tmp_path / "x.safetensors"))
    np.testing.assert_array_equal(theirs["w"].numpy(), arrays["w"])
    assert theirs["b"].dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs["b"].float().numpy(), arrays["b"])
    save_file({"h": torch.randn(4, 4).half(), "g": torch.randn(3).bfloat16()}, str(tmp_path / "y.safetensors"))
    ours, _ = safetensors_io.load(tmp_path / "y.safetensors")
    ref = load_file(str(tmp_path / "y.safetensors"))
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k].float().numpy())


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    ours = np.frombuffer(safetensors_io._encode(x, "BF16"), dtype="<u2")
    theirs = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


def test_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError):
        with safetensors_io.StreamWriter(target, {"a": ("F32", (2,)), "b": ("F32", (2,))}) as w:
            w.write("a", np.zeros(2))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), "pickle"),
    (lambda p: p.write_bytes(b"PK\x03\x04zipzip"), "pickle"),
    (lambda p: p.write_bytes(b"abc"), "too short"),
    (lambda p: p.write_bytes(struct.pack("<Q", 10_000) + b"{}"), "header declares"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"nope"), "not valid JSON"),
])
def test_bad_files_are_user_errors(tmp_path, make, message):
    p = tmp_path / "bad.safetensors"
    make(p)
    with pytest.raises(UserError, match=message) as e:
        safetensors_io.read_header(p)
    assert str(p) in str(e.value)


def test_truncated_and_nan_files(tmp_path):
    p = tmp_path / "t.safetensors"
    safetensors_io.save(p, {"a": np.ones((4, 4), np.float32)})
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(UserError, match="truncated"):
        safetensors_io.read_header(p)
    q = tmp_path / "n.safetensors"
    safetensors_io.save(q, {"a": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(UserError, match="NaN or Inf"):
        safetensors_io.read_tensor(safetensors_io.read_header(q), "a")
