"""`aggregate` reuses the Grams `similarity` saved only for the bytes they came from, proven by hashing
the bytes it aggregates; an unchanged round is then read once, and never hashed apart."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from fedbip_cli.core.files import digest_cache, safetensors_io
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.steps import coordinator
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace


class Reads:
    """Counts the tensor reads and whole-file hashes of every file (a spy: the real functions run)."""

    def __init__(self, monkeypatch) -> None:
        self.tensors: Counter = Counter()
        self.hashed: Counter = Counter()
        real_read, real_hash = safetensors_io.read_into, digest_cache.sha256_file

        def read_into(header, name, out, **kw):
            self.tensors[(Path(header.path).name, name)] += 1
            return real_read(header, name, out, **kw)

        def sha(path, *a, **kw):
            self.hashed[Path(path).name] += 1
            return real_hash(path, *a, **kw)

        monkeypatch.setattr(safetensors_io, "read_into", read_into)
        monkeypatch.setattr(digest_cache, "sha256_file", sha)

    def of(self, path: Path) -> list[int]:
        return [n for (f, _), n in self.tensors.items() if f == path.name]


def test_an_unchanged_round_reads_each_task_vector_once(tmp_path, monkeypatch):
    rnd = make_round(tmp_path, 4, Shape(), space="factor")
    ws = Workspace.open(tmp_path)
    coordinator.similarity(ws, 0, plot=False)
    reads = Reads(monkeypatch)
    coordinator.aggregate(ws, 0)
    n_tensors = len(safetensors_io.read_header(rnd.files["taskvec"][0]).tensors)
    for tv in rnd.files["taskvec"]:
        assert reads.of(tv) == [1] * n_tensors, tv  # the output pass only: no Gram pass
        assert reads.hashed[tv.name] == 0  # and no separate read for the manifest's digest
    # without saved Grams the Gram pass reads them too
    (ws.round_dir(0) / "grams.safetensors").unlink()
    reads.tensors.clear()
    coordinator.aggregate(ws, 0, force=True)
    assert all(reads.of(tv) == [2] * n_tensors for tv in rnd.files["taskvec"])


def rewrite_in_place(path: Path, change) -> None:
    """New bytes in the same inode, same size, with the old mtime put back: stat data cannot tell."""
    st = os.stat(path)
    arrays, meta = safetensors_io.load(path)
    tmp = path.with_name("scratch.bin")
    safetensors_io.save(tmp, {k: change(v) for k, v in arrays.items()}, meta)
    data = tmp.read_bytes()
    tmp.unlink()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino


def test_a_vector_rewritten_in_place_after_similarity_is_still_clipped(tmp_path, monkeypatch):
    rnd = make_round(tmp_path, 5, Shape(), space="factor")
    ws = Workspace.open(tmp_path)
    coordinator.similarity(ws, 0, plot=False)
    evil = rnd.files["taskvec"][4]
    rewrite_in_place(evil, lambda v: v * 100)
    reads = Reads(monkeypatch)
    res = coordinator.aggregate(ws, 0)
    # the saved Grams looked valid by stat data: the first output pass was dropped when its digests
    # differed, then Grams and outputs were computed from the bytes
    assert set(reads.of(evil)) == {3}
    doc = json.loads((ws.round_dir(0) / "weights.json").read_text())
    assert "c004" in doc["clip"]["clipped"] and doc["clip"]["rule"] == "median"
    # the result is the one a fresh run on the same bytes gives, and the manifest has the file's real digest
    manifest = json.loads((ws.round_dir(0) / "manifest.json").read_text())["steps"]["aggregate"]
    assert manifest["inputs"]["rounds/0000/deltas/c004.safetensors"] == sha256_file(evil)
    (ws.round_dir(0) / "grams.safetensors").unlink()
    again = coordinator.aggregate(ws, 0, force=True)
    np.testing.assert_allclose(again.weights, res.weights, atol=1e-9)
    assert json.loads((ws.round_dir(0) / "weights.json").read_text())["clip"] == doc["clip"]
