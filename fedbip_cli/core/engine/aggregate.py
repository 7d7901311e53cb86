"""The aggregation engine: applies a strategy's Mixing to a round's task vectors, in factor or delta space.

Inputs: K task vectors and the start adapters they were made from (`RoundData`; clients sharing a
start adapter share its reads). Outputs: one PEFT adapter folder per client plus the example-weighted
global adapter, each written as a stream into a temporary folder swapped into place at the end, so
memory holds a few tensors x K, never K whole adapters.

- factor space (`factor_space`): tensor by tensor, exact elementwise arithmetic on A, B and heads.
- delta space (`delta_space`): module by module on the exact weight changes ΔW = s·B·A, refactored to
  the adapter's rank; the relative truncation error of every output is returned.

Everything a pass depends on besides the (read-only) round is an argument: the `RoundReader` it reads
through (its `TensorSource` decides where bytes come from and who hashes them), the clip multipliers
`scales` (`clipping.Clip.scales`), the writers outputs go to (`AdapterWriters`, wrapped by the round's
rank padding), and a `before_commit` check. So the same round can be read twice, hashed or not,
clipped or not, without anything set on it and cleared afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedbip_cli.core.engine import delta_space, factor_space
from fedbip_cli.core.engine.adapter_writers import AdapterWriters
from fedbip_cli.core.engine.clipping import Clip, scale_grams
from fedbip_cli.core.engine.coefficients import output_coefficients
from fedbip_cli.core.engine.round_data import RoundData, RoundReader
from fedbip_cli.core.engine.threads import fast_gil_handoff, single_threaded_blas
from fedbip_cli.core.files.adapter import module_of
from fedbip_cli.core.files.adapter_meta import standard_config
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.taskvec import check_space
from fedbip_cli.core.strategies.base import Mixing, RoundStats
from fedbip_cli.core.strategies.similarity import GLOBAL
from fedbip_cli.core.strategies.weights import example_weights

__all__ = [
    "Written",
    "clipped_stats",
    "produce_outputs",
    "round_stats",
    "task_norms",
    "write_round_outputs",
]


def _ones(data: RoundData) -> np.ndarray:
    return np.ones(len(data.clients))


def round_stats(src: RoundReader, need_model_gram: bool, space: str = "factor",
                scales: np.ndarray | None = None) -> RoundStats:
    """Stream over the inputs once (through `src`) and collect the Gram matrices strategies look at,
    of the task vectors times `scales` (clipping; None: as they are)."""
    check_space(space)
    data = src.data
    scales = _ones(data) if scales is None else np.asarray(scales, dtype=np.float64)
    with single_threaded_blas(), fast_gil_handoff():
        if space == "delta":
            task, model = delta_space.grams(src, need_model_gram, scales)
        else:
            task, model = {}, ({} if need_model_gram else None)
            factor_space.grams(src, data.names, need_model_gram, scales, task, model)
    return RoundStats(list(data.clients), data.num_examples, task, model)


def task_norms(stats: RoundStats) -> np.ndarray:
    """Each task vector's L2 norm, from the overall Gram matrix's diagonal."""
    return np.sqrt(np.clip(np.diag(stats.task_grams[GLOBAL]), 0, None))


def clipped_stats(stats: RoundStats, clip: Clip) -> RoundStats:
    """The task statistics of the round with `clip` applied (Grams rescaled: diag(c) G diag(c)).
    Model Grams (start + c tau) cannot be rescaled, their cross terms with the start adapters change:
    compute them again with `round_stats(..., scales=clip.scales)`."""
    if not clip.active:
        return stats
    if stats.model_grams is not None:
        raise ValueError("clipped_stats: model Grams must be computed again from the clipped vectors")
    return RoundStats(stats.clients, stats.num_examples, scale_grams(stats.task_grams, clip.scales), None)


class Sink(Protocol):
    def write(self, name: str, rows: np.ndarray | Sequence[np.ndarray]) -> None:
        """Receive tensor `name` of every output (rows[t] for output t), in `RoundData.output_names` order."""


def produce_outputs(src: RoundReader, mixing: Mixing, sink: Sink, global_row: np.ndarray | None,
                    space: str = "factor", scales: np.ndarray | None = None) -> delta_space.Truncation | None:
    """Compute every output tensor (K clients, then the global adapter when `global_row` holds the
    example weights) from the task vectors times `scales` and hand each to `sink`; in delta space,
    return the outputs' truncation."""
    check_space(space)
    data = src.data
    scales = _ones(data) if scales is None else np.asarray(scales, dtype=np.float64)
    n_targets = len(data.clients) + (global_row is not None)
    if space == "delta":
        return delta_space.write_outputs(src, mixing, scales, sink, global_row, n_targets)
    parts = factor_space.parts_of(data, scales)
    coeffs: dict[str, np.ndarray] = {}
    for name in data.output_names:
        module = module_of(name)
        if module not in coeffs:
            coeffs[module] = output_coefficients(parts, mixing.for_module(module), mixing.mode, global_row)
        sink.write(name, factor_space.mix(src, name, coeffs[module]))
    return None


@dataclass
class Written:
    """What writing a round's outputs reports beside the files."""

    truncation: dict[str, dict] | None = None
    """Delta space: per output, ||exact - written|| / ||exact|| of its LoRA weight change (and of the
    round's update, see `delta_space.Truncation.report`); None in factor space."""
    ranks: dict = field(default_factory=dict)
    """Mixed ranks: the ranks, common rank, reference client and per-client rank truncation."""


def write_round_outputs(src: RoundReader, mixing: Mixing, out_dirs: Sequence[Path], global_dir: Path | None,
                        space: str = "factor", scales: np.ndarray | None = None, digests: Digests | None = None,
                        before_commit: Callable[[], None] | None = None, metadata: dict | None = None,
                        cards: Sequence[str] | None = None) -> Written:
    """Write every client's personalized adapter (and the global one) as PEFT adapter folders
    (hashed as written into `digests` when given). `metadata` is laid over each start adapter's
    config (core.files.adapter_meta.standard_config); `cards` are the README.md of each output, in
    the order of `out_dirs` then the global one.

    `before_commit()` runs once every tensor is written, before any folder is swapped into place: an
    exception from it leaves the previous outputs as they were (e.g. inputs whose read digests do not
    match the Grams the weights came from).
    """
    check_space(space)
    data = src.data
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
        sink = data.padding.fitting(list(data.clients), writers)  # mixed ranks: back to each client's own rank
        trunc = produce_outputs(src, mixing, sink, global_row, space, scales)
        if before_commit is not None:
            before_commit()
    return Written(trunc.report(labels) if trunc is not None else None, data.padding.report(list(data.clients), sink))
