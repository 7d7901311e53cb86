"""Fuzzing the readers of files other sites send (issue 15): random bytes and random headers for the
safetensors reader, random metadata for task vectors, random adapter configs and manifests. Every input
either reads cleanly, with its values in range, or is one UserError line; never another exception, and
nothing is written."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import _LORA_RULES, check_lora_config
from fedbip_cli.core.files.manifest import MANIFEST, verify_round
from fedbip_cli.core.files.taskvec import (
    _REQUIRED,
    MAX_EXAMPLES,
    MAX_ROUND,
    SPACES,
    parse_meta,
)
from fedbip_cli.errors import UserError
from fuzzing import fuzz, one_line

DIR = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-"))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=6)


def listing() -> set[str]:
    return {p.name for p in DIR.rglob("*")}


def read_all(path: Path) -> None:
    """read_header and every tensor: a clean read or one UserError line; nothing written."""
    before = listing()
    try:
        header = safetensors_io.read_header(path)
        for name in header.tensors:
            out = safetensors_io.read_tensor(header, name)
            assert out.dtype == np.float32 and np.isfinite(out).all()
            assert tuple(out.shape) == header.tensors[name].shape
    except UserError as e:
        one_line(e)
    assert listing() == before


@fuzz(2000)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    path = DIR / "bytes.safetensors"
    path.write_bytes(data)
    read_all(path)


SHAPE = st.lists(st.integers(-2, 6) | st.sampled_from([2 ** 62, True, 1.5, "3"]), max_size=3)
SPEC = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "", 5]),
    "shape": SHAPE | JSON,
    "data_offsets": st.lists(st.integers(-4, 64) | st.sampled_from([2 ** 64, None, "0"]), min_size=0, max_size=3)
    | JSON,
})
HEADER = st.dictionaries(st.text(max_size=10), SPEC | JSON, max_size=4).flatmap(
    lambda tensors: st.fixed_dictionaries({"tensors": st.just(tensors),
                                           "metadata": st.none() | JSON,
                                           "data": st.binary(max_size=96),
                                           "pad": st.integers(-3, 3)}))


@fuzz(1800)
@given(HEADER)
def test_random_headers(doc):
    """Structured headers (valid-looking dtypes, shapes and offsets, and junk in their place) over random data."""
    header = dict(doc["tensors"])
    if doc["metadata"] is not None:
        header["__metadata__"] = doc["metadata"]
    raw = json.dumps(header).encode()
    declared = max(0, len(raw) + doc["pad"])  # a header length that may lie by a few bytes
    path = DIR / "header.safetensors"
    path.write_bytes(struct.pack("<Q", declared) + raw + doc["data"])
    read_all(path)


def valid_meta() -> dict[str, str]:
    return {"format": "fedbip.taskvec/1", "client": "c1", "round": "3", "space": "factor",
            "base_fingerprint": "ab" * 16, "start_sha256": "0" * 64, "num_examples": "12",
            "lora_config": json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"]})}


FIELD_VALUES = {
    "round": st.text(max_size=12) | st.integers(-5, 10 ** 25).map(str),
    "num_examples": st.text(max_size=12) | st.integers(-5, 10 ** 25).map(str),
    "lora_config": st.text(max_size=40) | JSON.map(json.dumps)
                   | st.fixed_dictionaries({k: JSON for k in _LORA_RULES}).map(json.dumps),
    "client": st.text(max_size=70),
    "space": st.text(max_size=8) | st.sampled_from(SPACES),
}
META = st.builds(lambda changes, drop: {k: v for k, v in (valid_meta() | changes).items() if k not in drop},
                 st.fixed_dictionaries({}, optional={k: FIELD_VALUES.get(k, st.text(max_size=70)) for k in _REQUIRED}),
                 st.sets(st.sampled_from(_REQUIRED), max_size=1))


@fuzz(2000)
@given(META)
def test_task_vector_metadata(md):
    """Metadata with one or more fields replaced by random strings, numbers or JSON (or missing)."""
    try:
        meta = parse_meta(safetensors_io.Header(DIR / "tv.safetensors", {}, md, 8))
    except UserError as e:
        one_line(e)
        return
    assert 1 <= meta.num_examples <= MAX_EXAMPLES and 0 <= meta.round <= MAX_ROUND and meta.space in SPACES
    assert isinstance(meta.lora_config, dict)
    assert isinstance(meta.lora_config.get("r", 1), int) and meta.lora_config.get("r", 1) > 0


@fuzz(1000)
@given(JSON | st.dictionaries(st.sampled_from(sorted(_LORA_RULES)), JSON, max_size=4))
def test_lora_configs(config):
    try:
        check_lora_config(config, "adapter_config.json")
    except UserError as e:
        one_line(e)
        return
    alpha = config.get("lora_alpha")
    assert alpha is None or (np.isfinite(alpha) and alpha > 0)


ROUND = DIR / "ws" / "rounds" / "0000"
MANIFESTS = JSON | st.fixed_dictionaries({"steps": st.dictionaries(
    st.text(max_size=8), st.fixed_dictionaries({}, optional={
        "inputs": st.dictionaries(st.text(max_size=12) | st.sampled_from(["../x", "/etc/hostname", "a/../../b"]),
                                  st.text(max_size=3) | st.just("0" * 64), max_size=3) | JSON,
        "outputs": JSON}) | JSON, max_size=3)})


@fuzz(400)
@given(MANIFESTS | st.binary(max_size=60))
def test_manifests(doc):
    """verify on a random manifest: a report or one UserError line; never a traceback."""
    ROUND.mkdir(parents=True, exist_ok=True)
    (ROUND / MANIFEST).write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    try:
        report = verify_round(ROUND)
    except UserError as e:
        one_line(e)
        return
    assert all(isinstance(p, str) for ps in report.values() for p in ps)


def teardown_module() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
