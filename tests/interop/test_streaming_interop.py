"""Streaming (positioned reads of one tensor across clients, outputs written as streams) gives the same
bytes as the in-memory path: every file loaded whole with the safetensors library, the same engine
arithmetic, outputs converted to their dtype by torch. fp16/bf16 inputs are accumulated in fp32 and
come back in their own dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedbip_cli.core.engine.aggregate import produce_outputs, round_stats
from fedbip_cli.core.engine.round_data import RoundData, RoundReader
from fedbip_cli.core.strategies.weights import example_weights
from fedbip_cli.steps import coordinator
from fedbip_cli.steps.coordinator.inputs import load_round
from fedbip_cli.testing.synthetic import Shape, make_round
from fedbip_cli.workspace.layout import Workspace

TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def load_whole(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


class InMemory:
    """A `TensorSource` serving a round's every file loaded whole, up front, by the safetensors library."""

    def __init__(self, data: RoundData) -> None:
        paths = {tv.header.path for tv in data.taskvecs} | {a.header.path for a in data.starts}
        self.files = {p: {k: v.float().numpy() for k, v in load_whole(p)[0].items()} for p in paths}

    def read_into(self, header, name, out, check_finite=True):
        out[...] = self.files[header.path][name]


def in_memory(data: RoundData) -> RoundReader:
    return data.reader(InMemory(data))


class Collect:
    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}

    def write(self, name, rows):
        self.tensors[name] = np.asarray(rows, dtype=np.float32)  # the engine's contract: fp32, then the file's dtype


@pytest.mark.parametrize("space", ["factor", "delta"])
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_streaming_equals_in_memory_bytes(tmp_path, space, dtype):
    import torch

    rnd = make_round(tmp_path, 3, Shape(hidden=12, r=2), space=space, dtype=dtype, shared_start=False, zero_b=False)
    ws = Workspace.open(tmp_path)
    # streaming: the real command path
    res = coordinator.aggregate(ws, 0, strategy="fedbip", space=space)
    # in memory: same inputs, loaded whole
    data = in_memory(load_round(ws, 0))
    stats = round_stats(data, need_model_gram=False, space=space)
    streamed_stats = round_stats(load_round(ws, 0).reader(), need_model_gram=False, space=space)
    for k, g in stats.task_grams.items():
        assert g.tobytes() == streamed_stats.task_grams[k].tobytes(), k
    weights = np.array(json.loads((ws.round_dir(0) / "weights.json").read_text())["weights"])
    from fedbip_cli.core.strategies import make_strategy

    mixing = make_strategy("fedbip").mixing(stats)
    np.testing.assert_allclose(mixing.matrix, weights, atol=1e-8)
    sink = Collect()
    produce_outputs(data, mixing, sink, example_weights(data.data.num_examples), space)
    targets = [ws.start_dir(1, c) for c in rnd.clients] + [ws.global_dir(1)]
    for t, folder in enumerate(targets):
        written, _ = load_whole(folder / "adapter_model.safetensors")
        assert set(written) == set(sink.tensors)
        for name, tensor in written.items():
            assert str(tensor.dtype) == f"torch.{TORCH_DTYPES[dtype]}", name
            want = torch.from_numpy(np.ascontiguousarray(sink.tensors[name][t])).to(getattr(torch, TORCH_DTYPES[dtype]))
            got_bytes, want_bytes = tensor.view(torch.uint8).numpy().tobytes(), want.view(torch.uint8).numpy().tobytes()
            assert got_bytes == want_bytes, (folder, name)
    assert (res.truncation is not None) == (space == "delta")


@pytest.mark.parametrize("strategy", ["fedbip", "fedavg"])
def test_factor_engine_matches_the_plain_float64_formula(tmp_path, strategy):
    from fedbip_cli.core.files.adapter import module_of
    from fedbip_cli.core.strategies import Mixing
    from reference import mix_tensor

    rnd = make_round(tmp_path, 4, Shape(hidden=16, r=2), shared_start=False, zero_b=False)
    ws = Workspace.open(tmp_path)
    res = coordinator.aggregate(ws, 0, strategy=strategy, space="factor")
    mixing = Mixing(res.weights, mode=res.mode)
    starts = [load_whole(ws.resolve_start(0, c) / "adapter_model.safetensors")[0] for c in rnd.clients]
    taus = [load_whole(p)[0] for p in rnd.files["taskvec"]]
    outs = [load_whole(ws.start_dir(1, c) / "adapter_model.safetensors")[0] for c in rnd.clients]
    for name in starts[0]:
        want = mix_tensor(mixing, module_of(name), np.stack([s[name].numpy() for s in starts]),
                          np.stack([t[name].numpy() for t in taus]))
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out[name].numpy(), want[i], rtol=1e-5, atol=1e-7)
