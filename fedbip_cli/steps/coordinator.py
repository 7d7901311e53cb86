"""Coordinator steps: similarity and aggregation of a round's task vectors. Imports no torch,
transformers or peft: numpy and the files are all it needs."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedbip_cli.core.engine import mixed_ranks
from fedbip_cli.core.engine.aggregate import (
    RoundData,
    clip_round,
    round_stats,
    write_round_outputs,
)
from fedbip_cli.core.engine.mixed_ranks import same_but_rank, same_shape_but_rank
from fedbip_cli.core.files import atomic, gram_cache
from fedbip_cli.core.files.adapter import copy_adapter, read_adapter
from fedbip_cli.core.files.atomic import sweep_tree
from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.locks import step_lock
from fedbip_cli.core.files.manifest import check_step, read_manifest, record_step
from fedbip_cli.core.files.taskvec import open_taskvec, taskvec_layout
from fedbip_cli.core.strategies.base import RoundStats, Strategy
from fedbip_cli.core.strategies.similarity import GLOBAL, cosines, zero_clients
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.layout import Workspace, read_json


def load_round(ws: Workspace, t: int, inputs: Path | None = None, *, min_clients: int = 2,
               digests: Digests | None = None) -> RoundData:
    """Open and cross-check every task vector of round t, and the start adapters they came from.

    The task vectors' and start adapters' data are not read here (only headers, and the start
    adapters' sha256, from `digests` when it already knows them)."""
    inputs = Path(inputs) if inputs is not None else ws.deltas_dir(t)
    if not inputs.is_dir():
        raise UserError(f"{inputs}: inputs folder not found")
    files = sorted(p for p in inputs.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))
    if len(files) < min_clients:
        raise UserError(f"{inputs}: holds {len(files)} task vector(s); at least {min_clients} clients are needed")
    tvs = []
    for f in files:
        client = check_client_name(f.stem, f"{f}: file name")
        tv = open_taskvec(f)
        if tv.meta.client != client or tv.meta.round != t:
            raise UserError(f"{f}: metadata says client {tv.meta.client!r} round {tv.meta.round}, "
                            f"but the file stands for client {client!r} round {t}")
        tvs.append(tv)
    first = tvs[0]
    for tv in tvs[1:]:
        if tv.meta.base_fingerprint != first.meta.base_fingerprint:
            raise UserError(f"{tv.path}: made on another base model than {first.path.name} (fingerprint mismatch)")
        if tv.meta.space != first.meta.space:
            raise UserError(f"{tv.path}: space {tv.meta.space!r} differs from {first.path.name}'s {first.meta.space!r}")
        if not same_but_rank(tv.meta.lora_config, first.meta.lora_config):  # ranks may differ: core/mixed_ranks.py
            raise UserError(f"{tv.path}: LoRA settings differ from {first.path.name}'s beyond rank and alpha; "
                            f"they cannot be combined")
        mine, theirs = tv.header.tensors, first.header.tensors
        if set(mine) != set(theirs):
            diff = sorted(set(mine) ^ set(theirs))
            raise UserError(f"{tv.path}: tensors differ from {first.path.name}'s: {diff[:3]}")
        for name, info in mine.items():
            if not same_shape_but_rank(name, info.shape, theirs[name].shape):
                raise UserError(f"{tv.path}: tensor {name!r} has shape {list(info.shape)}, "
                                f"{first.path.name} has {list(theirs[name].shape)}")
    starts = []
    own = digests is None
    digests = Digests(ws.root) if own else digests
    for tv in tvs:
        folder = ws.resolve_start(t, tv.meta.client)
        adapter = read_adapter(folder)
        sha = digests.digest(adapter.weights_path)
        if sha != tv.meta.start_sha256:
            raise UserError(f"{tv.path}: was trained from another start adapter than {folder} (sha256 mismatch)")
        expected = taskvec_layout(adapter, tv.meta.space)
        if set(expected) != set(tv.header.tensors):
            raise UserError(f"{folder}: tensors or shapes do not match the task vector {tv.path.name}'s")
        for n, (_, shape) in expected.items():  # ranks may differ between clients, never from the own start
            if tv.header.tensors[n].shape != shape:
                raise UserError(f"{tv.path}: tensor {n!r} has shape {list(tv.header.tensors[n].shape)}, "
                                f"its start adapter {folder} needs {list(shape)}")
        starts.append(adapter)
    if own:
        digests.close()
    return mixed_ranks.for_round(RoundData([tv.meta.client for tv in tvs], tvs, starts))


@dataclass
class SimilarityResult:
    round: int
    clients: list[str]
    matrix: np.ndarray
    per_module: dict[str, np.ndarray] = field(default_factory=dict)
    zero_clients: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    space: str = "factor"

    def to_json(self) -> dict:
        return {
            "round": self.round, "space": self.space, "clients": self.clients,
            "similarity": self.matrix.round(6).tolist(),
            "per_module": {m: s.round(6).tolist() for m, s in self.per_module.items()},
            "zero_clients": self.zero_clients, "files": self.files,
            "zero_rule": "an all-zero task vector has cosine 0 to every other client and 1 to itself",
        }


def resolve_space(ws: Workspace, space: str | None) -> str:
    """The space to compute in: the --space flag, else aggregation.space of the config (default factor)."""
    return ws.config.aggregation.resolve_space(space)


def similarity(ws: Workspace, t: int, inputs: Path | None = None, *, layer_wise: bool = False,
               plot: bool = True, space: str | None = None) -> SimilarityResult:
    """Pairwise cosine similarity of round t's task vectors; writes similarity.json/.csv(/.png).

    `space` (factor or delta; default aggregation.space) is the space the cosines are taken in,
    whichever space the task vector files are stored in.
    """
    t0 = time.perf_counter()
    space = resolve_space(ws, space)
    with Digests(ws.root) as digests:
        data = load_round(ws, t, inputs, digests=digests)
        if plot:
            from fedbip_cli.plots import preload

            preload()
        data.hashers = digests.while_reading(tv.header for tv in data.taskvecs)  # hashed from the Gram pass's reads
        stats = round_stats(data, need_model_gram=False, space=space)
        digests.finish_reading(data.hashers)
        data.hashers = {}
        return _similarity_outputs(ws, t, data, stats, layer_wise, plot, space, digests, t0)


def _similarity_outputs(ws: Workspace, t: int, data: RoundData, stats, layer_wise: bool, plot: bool, space: str,
                        digests: Digests, t0: float) -> SimilarityResult:
    """Cosines from the Gram matrices; similarity.json/.csv/.png and the manifest entry."""
    sims = cosines(stats.task_grams)
    result = SimilarityResult(t, data.clients, sims[GLOBAL],
                              {m: s for m, s in sims.items() if m != GLOBAL} if layer_wise else {},
                              [data.clients[i] for i in zero_clients(stats.task_grams[GLOBAL])], space=space)
    out = ws.round_dir(t)
    paths = {"json": out / "similarity.json", "csv": out / "similarity.csv", "grams": out / gram_cache.FILE}
    atomic.write_text(paths["csv"], matrix_csv(data.clients, result.matrix))
    if data.scales is None:
        gram_cache.save_grams(paths["grams"], stats.task_grams, space, data.clients,
                             [digests.digest(tv.path) for tv in data.taskvecs])
    if plot:
        from fedbip_cli.plots import similarity_heatmap

        png = similarity_heatmap(result.matrix, data.clients, out / "similarity.png", f"Task-vector cosine, round {t}")
        if png:
            paths["png"] = png
    result.files = {k: str(v) for k, v in paths.items()}
    atomic.write_json(paths["json"], result.to_json())
    record_step(out, "similarity", inputs={tv.meta.client: tv.path for tv in data.taskvecs}, outputs=paths,
                config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0, extra={"space": space},
                digests=digests)
    return result


def matrix_csv(clients: list[str], matrix: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["client", *clients])
    for c, row in zip(clients, matrix):
        w.writerow([c, *(f"{v:.6f}" for v in row)])
    return buf.getvalue()


@dataclass
class AggregateResult:
    round: int
    strategy: str
    clients: list[str]
    weights: np.ndarray
    mode: str
    outputs: dict[str, str]
    kept: list[str]
    space: str = "factor"
    truncation: dict[str, dict] | None = None
    """Delta space: per output, ||exact - written|| / ||exact|| of its LoRA weight change."""
    skipped: bool = False

    def to_json(self) -> dict:
        return {"round": self.round, "next_round": self.round + 1, "strategy": self.strategy, "mode": self.mode,
                "space": self.space, "clients": self.clients, "weights": self.weights.round(6).tolist(),
                "outputs": self.outputs, "kept_previous_adapter": self.kept, "truncation": self.truncation,
                "skipped": self.skipped}


def strategy_from_config(ws: Workspace, name: str | None = None) -> Strategy:
    """Strategy `name` (default aggregation.strategy) with the settings fedbip.yaml gives it."""
    return ws.config.aggregation.make_strategy(name)


def aggregate(ws: Workspace, t: int, inputs: Path | None = None, *, strategy: str | Strategy | None = None,
              min_clients: int = 2, space: str | None = None, force: bool = False) -> AggregateResult:
    """Personalized adapters for round t+1 from round t's task vectors, plus the global adapter.

    Configured clients that sent no task vector this round keep the adapter they started it with.
    `space` (factor or delta; default aggregation.space) is the space similarities and sums are taken
    in; in delta space each output's relative truncation error is reported. A rerun with the same
    inputs, strategy and space, whose outputs are intact, changes nothing (it verifies and says so);
    `force` redoes it. A second concurrent run on the same round fails at once.
    """
    space = resolve_space(ws, space)
    strat = strategy if isinstance(strategy, Strategy) else strategy_from_config(ws, strategy)
    with step_lock(ws.round_dir(t), "aggregate"):
        sweep_tree(ws.round_dir(t + 1))  # what killed runs of this step left among its outputs
        if not force:
            done = finished_aggregate(ws, t, strat, inputs, space)
            if done is not None:
                return done
        return _aggregate(ws, t, inputs, strat, min_clients, space)


def finished_aggregate(ws: Workspace, t: int, strat: Strategy, inputs: Path | None,
                       space: str) -> AggregateResult | None:
    """The recorded result if this exact aggregation already ran and its files are intact, else None."""
    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get("aggregate")
    folder = Path(inputs) if inputs is not None else ws.deltas_dir(t)
    if entry is None or not folder.is_dir():
        return None
    arrived = sorted(p.stem for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    same = (entry.get("strategy") == strat.name and entry.get("options") == strat.options()
            and entry.get("space") == space and entry.get("clients") == arrived
            and entry.get("clip_factor") == ws.config.aggregation.clip_factor)
    if not same or check_step(ws.round_dir(t), "aggregate", entry):
        return None
    doc = read_json(ws.round_dir(t) / "weights.json")
    outputs = {c: str(ws.start_dir(t + 1, c)) for c in doc["clients"]} | {"global": str(ws.global_dir(t + 1))}
    return AggregateResult(t, strat.name, doc["clients"], np.array(doc["weights"]), doc["mode"], outputs,
                           doc.get("kept_previous_adapter", []), space, doc.get("truncation"), skipped=True)


def _aggregate(ws: Workspace, t: int, inputs: Path | None, strat: Strategy, min_clients: int,
               space: str) -> AggregateResult:
    t0 = time.perf_counter()
    clip = ws.config.aggregation.clip_factor
    with Digests(ws.root) as digests:
        data = load_round(ws, t, inputs, min_clients=min_clients, digests=digests)
        stats = saved_stats(ws, t, data, space, digests) if not strat.needs_model_gram else None
        if stats is None:  # hash the task vectors from the Gram pass's reads, as similarity does
            data.hashers = digests.while_reading(tv.header for tv in data.taskvecs)
            stats = round_stats(data, need_model_gram=strat.needs_model_gram, space=space)
            digests.finish_reading(data.hashers)
            data.hashers = {}
        stats = clip_round(data, stats, clip, space)
        digests.prefetch([tv.path for tv in data.taskvecs] + [a.weights_path for a in data.starts])
        mixing = strat.mixing(stats)
        nxt = t + 1
        out_dirs = [ws.start_dir(nxt, c) for c in data.clients]
        truncation = write_round_outputs(data, mixing, out_dirs, ws.global_dir(nxt), space=space, digests=digests)
        return _aggregate_outputs(ws, t, data, strat, mixing, out_dirs, truncation, space, digests, t0)


def saved_stats(ws: Workspace, t: int, data: RoundData, space: str, digests: Digests) -> RoundStats | None:
    """The round's task Gram matrices as `similarity` saved them, if computed in this space from these
    very task vectors (their digests known without reading them); None otherwise."""
    sha = [digests.cached(tv.path) for tv in data.taskvecs]
    grams = gram_cache.load_grams(ws.round_dir(t) / gram_cache.FILE, space, data.clients, sha)
    return RoundStats(list(data.clients), data.num_examples, grams) if grams is not None else None


def _aggregate_outputs(ws: Workspace, t: int, data: RoundData, strat: Strategy, mixing, out_dirs: list[Path],
                       truncation: dict | None, space: str, digests: Digests, t0: float) -> AggregateResult:
    """Keep-previous copies for absent clients, weights.json and the manifest entry."""
    nxt = t + 1
    outputs = {c: str(d) for c, d in zip(data.clients, out_dirs)}
    kept = []  # clients with an adapter of their own that sent nothing this round keep it
    for c in ws.config.clients:
        if c not in outputs and ws.start_dir(t, c).is_dir():
            copy_adapter(ws.start_dir(t, c), ws.start_dir(nxt, c))
            outputs[c] = str(ws.start_dir(nxt, c))
            kept.append(c)
    joining = [c for c in ws.config.clients if c not in outputs]  # they start from rounds/T+1/global
    outputs["global"] = str(ws.global_dir(nxt))
    clip = ws.config.aggregation.clip_factor
    clipped = {c: round(float(s), 6) for c, s in zip(data.clients, data.scales) if s < 1} if data.scales is not None else {}
    weights_path = ws.round_dir(t) / "weights.json"
    atomic.write_json(weights_path, {
        "round": t, "strategy": strat.name, "options": strat.options(), "mode": mixing.mode, "space": space,
        "clients": data.clients, "num_examples": data.num_examples.astype(int).tolist(),
        "weights": mixing.matrix.round(8).tolist(),
        "per_module": {m: w.round(8).tolist() for m, w in mixing.per_module.items()},
        "kept_previous_adapter": kept, "join_from_global": joining, "clip_factor": clip, "clipped": clipped,
        "truncation": truncation, **(data.report() if isinstance(data, mixed_ranks.MixedRankRoundData) else {}),
    })
    record_step(ws.round_dir(t), "aggregate",
                inputs={**{f"taskvec:{c}": tv.path for c, tv in zip(data.clients, data.taskvecs)},
                        **{f"start:{c}": a.weights_path for c, a in zip(data.clients, data.starts)}},
                outputs={**{c: Path(p) for c, p in outputs.items()}, "weights": weights_path},
                config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0,
                extra={"strategy": strat.name, "options": strat.options(), "space": space, "clients": data.clients,
                       "kept_previous_adapter": kept, "join_from_global": joining, "clip_factor": clip,
                       "clipped": clipped,
                       "truncation_relative": {k: v["relative"] for k, v in truncation.items()} if truncation else None},
                digests=digests)
    return AggregateResult(t, strat.name, data.clients, mixing.matrix, mixing.mode, outputs, kept, space, truncation)
