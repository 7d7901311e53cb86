"""Manifest digests stay exact while the coordinator hashes from its own reads and writes, on a worker,
and remembers them between steps."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.steps import coordinator
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("space", ["factor", "delta"])
def test_manifest_digests_are_the_files_sha256(tmp_path, space):
    make_round(tmp_path, 3, Shape(), space=space, dtype="BF16")
    ws = Workspace.open(tmp_path)
    coordinator.similarity(ws, 0, plot=False, space=space)
    coordinator.aggregate(ws, 0, space=space)
    steps = json.loads((ws.round_dir(0) / "manifest.json").read_text())["steps"]
    checked = 0
    for step in ("similarity", "aggregate"):
        for kind in ("inputs", "outputs"):
            for rel, digest in steps[step][kind].items():
                assert digest == sha(tmp_path / rel), (step, rel)
                checked += 1
    assert checked >= 19


def test_digest_cache_notices_a_changed_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"one")
    with Digests(tmp_path) as d:
        assert d.digest(f) == sha(f)
    with Digests(tmp_path) as d:
        assert d.cached(f) == sha(f)
        f.write_bytes(b"two!")
        assert d.cached(f) is None
        assert d.digest(f) == sha(f)


def write_reversed(path, tensors: dict) -> None:
    """A valid safetensors file whose tensors lie in the reverse of name order (as another writer may lay them)."""
    import struct

    import numpy as np

    header, blobs, pos = {}, [], 0
    for name in sorted(tensors, reverse=True):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_read_hashes_are_the_file_digest_whatever_the_read_order(tmp_path):
    import random
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from fedbip_cli.core.files import safetensors_io

    rng = np.random.default_rng(0)
    path = tmp_path / "t.safetensors"
    write_reversed(path, {f"t{k:02d}": rng.standard_normal((k + 1, 7)).astype(np.float32) for k in range(20)})
    header = safetensors_io.read_header(path)
    names = sorted(header.tensors)
    with Digests(None) as digests:
        in_name_order = digests.read_hashes([header])
        for n in names:  # the reverse of the file's order
            safetensors_io.read_into(header, n, np.empty(header.tensors[n].shape, np.float32),
                                     on_raw=in_name_order[path].feed)
        shuffled = digests.read_hashes([header])
        random.Random(1).shuffle(names)
        with ThreadPoolExecutor(4) as pool:  # fed from several threads at once, as the delta engine's workers do
            list(pool.map(lambda n: safetensors_io.read_into(header, n, np.empty(header.tensors[n].shape, np.float32),
                                                             on_raw=shuffled[path].feed), names))
        twice = digests.read_hashes([header])
        for n in names + names[:1]:  # a tensor read twice: nothing proven
            safetensors_io.read_into(header, n, np.empty(header.tensors[n].shape, np.float32), on_raw=twice[path].feed)
        assert in_name_order[path].digest() == shuffled[path].digest() == sha(path)
        assert twice[path].digest() is None
