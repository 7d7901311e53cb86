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
