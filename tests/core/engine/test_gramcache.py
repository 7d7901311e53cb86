"""`aggregate` reuses the Gram matrices `similarity` saved, only for the very task vectors they came from."""

from __future__ import annotations

import json

import numpy as np

from fedbip_cli.core.engine import aggregate as engine
from fedbip_cli.core.files import safetensors_io
from fedbip_cli.steps import coordinator
from fedbip_cli.steps.coordinator import grams
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace


def test_aggregate_reuses_similarity_grams_and_notices_changes(tmp_path, monkeypatch):
    rnd = make_round(tmp_path, 3, Shape(), space="factor")
    ws = Workspace.open(tmp_path)
    coordinator.similarity(ws, 0, plot=False)
    assert (ws.round_dir(0) / "grams.safetensors").is_file()
    calls = []
    real = engine.round_stats
    monkeypatch.setattr(grams, "round_stats", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = coordinator.aggregate(ws, 0)
    assert calls == []  # reused
    coordinator.aggregate(ws, 0, space="delta", force=True)  # a final round: other settings take force
    assert len(calls) == 1  # other space: computed
    # a task vector rewritten in place is not trusted to the saved Grams: the same bytes are re-hashed and
    # reused (the final-round check hashes them), other bytes are computed afresh
    tv = rnd.files["taskvec"][1]
    tv.write_bytes(tv.read_bytes())
    coordinator.aggregate(ws, 0, force=True)
    assert len(calls) == 1
    again = json.loads((ws.round_dir(0) / "weights.json").read_text())
    np.testing.assert_allclose(again["weights"], first.weights, atol=1e-6)
    arrays, meta = safetensors_io.load(tv)
    safetensors_io.save(tv, {k: 2 * v for k, v in arrays.items()}, meta)
    coordinator.aggregate(ws, 0, force=True)
    assert len(calls) == 2
