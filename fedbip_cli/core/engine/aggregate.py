"""The aggregation engine: applies a strategy's Mixing to a round's task vectors, in factor or delta space.

Inputs: K task vectors and the start adapters they were made from (`RoundData`; clients sharing a
start adapter share its reads). Outputs: one PEFT adapter folder per client plus the example-weighted
global adapter, each written as a stream into a temporary folder swapped into place at the end, so
memory holds a few tensors x K, never K whole adapters.

- factor space (`core.factor`): tensor by tensor, exact elementwise arithmetic on A, B and heads.
- delta space (`core.delta`): module by module on the exact weight changes ΔW = s·B·A, refactored to
  the adapter's rank; the relative truncation error of every output is returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from fedbip_cli.core.engine import delta_space, factor_space
from fedbip_cli.core.engine.adapter_writers import AdapterWriters
from fedbip_cli.core.engine.clipping import clip_scales, scale_grams
from fedbip_cli.core.engine.coefficients import output_coefficients
from fedbip_cli.core.engine.round_data import RoundData
from fedbip_cli.core.engine.threads import fast_gil_handoff, single_threaded_blas
from fedbip_cli.core.files.adapter import module_of
from fedbip_cli.core.files.adapter_meta import standard_config
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.taskvec import check_space
from fedbip_cli.core.strategies.base import Mixing, RoundStats
from fedbip_cli.core.strategies.similarity import GLOBAL
from fedbip_cli.core.strategies.weights import example_weights

__all__ = ["RoundData", "round_stats", "produce_outputs", "write_round_outputs", "mix_tensor"]


def round_stats(data: RoundData, need_model_gram: bool, space: str = "factor",
                clip_factor: float | None = None) -> RoundStats:
    """Stream over the inputs once and collect the Gram matrices strategies look at (clipped with
    `clip_factor`, see `clip_round`)."""
    check_space(space)
    data.scales = None
    task, model = _grams(data, need_model_gram, space)
    return clip_round(data, RoundStats(list(data.clients), data.num_examples, task, model), clip_factor, space)


def clip_round(data: RoundData, stats: RoundStats, clip_factor: float | None, space: str) -> RoundStats:
    """Scale task vectors longer than clip_factor x the round's median norm down to it.

    Sets data.scales, so the aggregation applies the same scaling, and returns the statistics of the
    clipped round: task Grams rescaled; model Grams (start + c tau) read again, as their cross terms
    with the start adapters change.
    """
    if not clip_factor:
        return stats
    scales = clip_scales(np.sqrt(np.clip(np.diag(stats.task_grams[GLOBAL]), 0, None)), clip_factor)
    if not (scales < 1).any():
        return stats
    data.scales = scales
    if stats.model_grams is not None:
        task, model = _grams(data, True, space)
    else:
        task, model = scale_grams(stats.task_grams, scales), None
    return RoundStats(list(data.clients), data.num_examples, task, model)


def _grams(data: RoundData, need_model_gram: bool, space: str):
    with single_threaded_blas(), fast_gil_handoff():
        if space == "delta":
            return delta_space.grams(data, need_model_gram)
        task, model = {}, ({} if need_model_gram else None)
        factor_space.grams(data, data.names, need_model_gram, task, model)
        return task, model


def mix_tensor(mixing: Mixing, module: str, starts: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Factor-space mixing of one tensor held in memory (K x shape starts and task vectors), in
    float64: the plain formula the streaming engine (`produce_outputs`) computes; for tests."""
    w = mixing.for_module(module).astype(np.float64)
    k = taus.shape[0]
    flat_t = taus.reshape(k, -1).astype(np.float64)
    if mixing.mode == "delta":
        out = starts.reshape(k, -1) + w @ flat_t
    else:
        out = w @ (starts.reshape(k, -1).astype(np.float64) + flat_t)
    return out.reshape(taus.shape).astype(np.float32)


class Sink(Protocol):
    def write(self, name: str, rows: np.ndarray) -> None:
        """Receive tensor `name` of every output (rows[t] for output t), in `RoundData.output_names` order."""


def produce_outputs(data: RoundData, mixing: Mixing, sink: Sink, global_row: np.ndarray | None,
                    space: str = "factor") -> delta_space.Truncation | None:
    """Compute every output tensor (K clients, then the global adapter when `global_row` holds the
    example weights) and hand each to `sink`; in delta space, return the outputs' truncation."""
    check_space(space)
    n_targets = len(data.clients) + (global_row is not None)
    if space == "delta":
        return delta_space.write_outputs(data, mixing, sink, global_row, n_targets)
    parts = factor_space.parts_of(data)
    coeffs: dict[str, np.ndarray] = {}
    for name in data.output_names:
        module = module_of(name)
        if module not in coeffs:
            coeffs[module] = output_coefficients(parts, mixing.for_module(module), mixing.mode, global_row)
        sink.write(name, factor_space.mix(data, name, coeffs[module]))
    return None


def write_round_outputs(data: RoundData, mixing: Mixing, out_dirs: Sequence[Path], global_dir: Path | None,
                        space: str = "factor", digests: Digests | None = None,
                        metadata: dict | None = None, cards: Sequence[str] | None = None) -> dict[str, dict] | None:
    """Write every client's personalized adapter (and the global one) as PEFT adapter folders
    (hashed as written into `digests` when given). `metadata` is laid over each start adapter's
    config (core.files.adapter_meta.standard_config); `cards` are the README.md of each output, in
    the order of `out_dirs` then the global one.

    Returns, in delta space, each output's truncation error ({client or "global": {relative, ...}});
    None in factor space, where nothing is truncated.
    """
    check_space(space)
    targets = list(zip(out_dirs, data.starts))
    labels = list(data.clients)
    global_row = None
    if global_dir is not None:
        targets.append((global_dir, data.global_start))
        labels.append("global")
        global_row = example_weights(data.num_examples)
    configs = [standard_config(like.config, metadata) for _, like in targets] if metadata is not None else None
    extra = [{"README.md": card} for card in cards] if cards is not None else None
    with single_threaded_blas(), fast_gil_handoff(), \
            AdapterWriters(targets, data.output_names, digests, configs, extra) as writers:
        trunc = produce_outputs(data, mixing, data.output_sink(writers), global_row, space)
    return trunc.report(labels) if trunc is not None else None
