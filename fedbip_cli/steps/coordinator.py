"""Coordinator steps: similarity and aggregation of a round's task vectors. Imports no torch,
transformers or peft: numpy and the files are all it needs."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedbip_cli.core.engine.aggregate import (
    RoundData,
    Written,
    clipped_stats,
    round_stats,
    task_norms,
    write_round_outputs,
)
from fedbip_cli.core.engine.clipping import Clip, check_factor, clip_round_norms
from fedbip_cli.core.engine.mixed_ranks import (
    load_round_data,
    same_but_rank,
    same_shape_but_rank,
)
from fedbip_cli.core.engine.round_data import FileSource
from fedbip_cli.core.files import atomic, gram_cache
from fedbip_cli.core.files.adapter import CONFIG_FILE, copy_adapter, read_adapter
from fedbip_cli.core.files.atomic import sweep_tree
from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.locks import step_lock
from fedbip_cli.core.files.manifest import check_step, read_manifest, record_step
from fedbip_cli.core.files.regular import inside
from fedbip_cli.core.files.taskvec import TaskVector, open_taskvec, taskvec_layout
from fedbip_cli.core.strategies.base import RoundStats, Strategy
from fedbip_cli.core.strategies.similarity import GLOBAL, cosines, zero_clients
from fedbip_cli.errors import NotReady, UserError
from fedbip_cli.steps.final_round import refuse_or_record, refuse_similarity
from fedbip_cli.steps.round_inputs import resolve_inputs
from fedbip_cli.workspace.layout import Workspace, read_json


def load_round(ws: Workspace, t: int, inputs: Path | None = None, *, min_clients: int = 2,
               digests: Digests | None = None) -> RoundData:
    """Open and cross-check every task vector of round t, and the start adapters they came from.

    The task vectors' and start adapters' data are not read here (only headers, and the start
    adapters' sha256, from `digests` when it already knows them)."""
    inputs = resolve_inputs(ws, t, inputs)
    files = sorted(p for p in inputs.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))
    if len(files) < min_clients:
        raise NotReady(f"{inputs}: holds {len(files)} task vector(s); waiting for at least {min_clients}")
    tvs = [member_taskvec(ws, f, t, inputs) for f in files]
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
        folder = inside(ws.resolve_start(t, tv.meta.client), [ws.root], "start adapter")
        adapter = read_adapter(folder)
        if adapter.lora_signature() != tv.meta.lora_config:
            raise UserError(f"{folder / CONFIG_FILE}: LoRA settings differ from those the task vector "
                            f"{tv.path.name} was made with (changed since?)")
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
    return load_round_data([tv.meta.client for tv in tvs], tvs, starts)


def member_taskvec(ws: Workspace, f: Path, t: int, inputs: Path) -> TaskVector:
    """The task vector file `f` of round t, if it comes from a client listed in fedbip.yaml, says so in its
    metadata, lies in the inputs folder or the workspace (links out are refused) and is a regular file;
    its num_examples capped at the client's declared clients.<name>.max_examples."""
    client = check_client_name(f.stem, f"{f}: file name")
    if client not in ws.config.clients:
        raise UserError(f"{f}: client {client!r} is not listed in {ws.config_path.name} (clients); "
                        f"only listed clients are aggregated")
    if f.is_symlink():
        inside(f, [ws.root, inputs], "task vector link")
    tv = open_taskvec(f)
    if tv.meta.client != client or tv.meta.round != t:
        raise UserError(f"{f}: metadata says client {tv.meta.client!r} round {tv.meta.round}, "
                        f"but the file stands for client {client!r} round {t}")
    cap = ws.config.clients[client].max_examples
    if cap is not None and tv.meta.num_examples > cap:
        tv = dataclasses.replace(tv, meta=dataclasses.replace(tv.meta, num_examples=cap))
    return tv


def capped_examples(data: RoundData) -> dict[str, dict[str, int]]:
    """Clients whose num_examples was capped at their declared max_examples: {client: {sent, used}}."""
    out = {}
    for c, tv in zip(data.clients, data.taskvecs):
        sent = int(tv.header.metadata["num_examples"])
        if sent != tv.meta.num_examples:
            out[c] = {"sent": sent, "used": tv.meta.num_examples}
    return out


def refuse_replays(data: RoundData, grams: dict[str, np.ndarray]) -> None:
    """UserError when two clients sent the same non-zero task vector (one site replaying another's
    under its own name): equal norms and cosine 1, to 1e-9, never happens between two trainings."""
    g = grams[GLOBAL]
    norms = np.diag(g)
    for i in range(len(norms)):
        for j in range(i + 1, len(norms)):
            if norms[i] > 0 and np.isclose(norms[i], norms[j], rtol=1e-9, atol=0) \
                    and g[i, j] >= (1 - 1e-9) * np.sqrt(norms[i] * norms[j]):
                raise UserError(f"{data.taskvecs[j].path}: holds the same task vector as "
                                f"{data.taskvecs[i].path.name}: a replayed vector is refused")


@dataclass
class SimilarityResult:
    round: int
    clients: list[str]
    matrix: np.ndarray
    per_module: dict[str, np.ndarray] = field(default_factory=dict)
    zero_clients: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    space: str = "factor"
    skipped: bool = False
    """Already done from the same task vectors: nothing was rewritten."""

    def to_json(self) -> dict:
        return {
            "round": self.round, "space": self.space, "clients": self.clients, "skipped": self.skipped,
            "similarity": self.matrix.round(6).tolist(),
            "per_module": {m: s.round(6).tolist() for m, s in self.per_module.items()},
            "zero_clients": self.zero_clients, "files": self.files,
            "zero_rule": "an all-zero task vector has cosine 0 to every other client and 1 to itself",
        }


def resolve_space(ws: Workspace, space: str | None) -> str:
    """The space to compute in: the --space flag, else aggregation.space of the config (default factor)."""
    return ws.config.aggregation.resolve_space(space)


def similarity(ws: Workspace, t: int, inputs: Path | None = None, *, layer_wise: bool = False,
               plot: bool = True, space: str | None = None, min_clients: int = 2,
               force: bool = False) -> SimilarityResult:
    """Pairwise cosine similarity of round t's task vectors; writes similarity.json/.csv(/.png).

    Already done from these very task vectors in this space, with its files intact, it rewrites
    nothing and returns the recorded result (`force` redoes it).

    `space` (factor or delta; default aggregation.space) is the space the cosines are taken in,
    whichever space the task vector files are stored in.
    """
    t0 = time.perf_counter()
    space = resolve_space(ws, space)
    if not force:
        folder = resolve_inputs(ws, t, inputs)
        done = finished_similarity(ws, t, folder, space, layer_wise)
        if done is not None:
            return done
        refuse_similarity(ws, t, folder)  # final rounds: steps/final_round.py
    with Digests(ws.root) as digests:
        data = load_round(ws, t, inputs, min_clients=min_clients, digests=digests)
        if plot:
            from fedbip_cli.plots import preload

            preload()
        stats, used = gram_pass(data, digests, False, space)
        refuse_replays(data, stats.task_grams)
        return _similarity_outputs(ws, t, data, stats, used, layer_wise, plot, space, digests, t0)


def finished_similarity(ws: Workspace, t: int, folder: Path, space: str, layer_wise: bool) -> SimilarityResult | None:
    """The recorded similarity of round t if it was computed in `space` from exactly the task vectors now
    in `folder` and its files are intact (per-module matrices too, when asked for), else None."""
    from fedbip_cli.steps.final_round import arrived_vectors

    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get("similarity")
    doc_path = ws.round_dir(t) / "similarity.json"
    if entry is None or entry.get("space") != space or not doc_path.is_file():
        return None
    used = sorted(Path(rel).stem for rel in entry.get("inputs", {}))
    if used != sorted(arrived_vectors(folder)) or check_step(ws.round_dir(t), "similarity", entry):
        return None
    doc = read_json(doc_path)
    if layer_wise and not doc.get("per_module"):
        return None
    return SimilarityResult(t, doc["clients"], np.array(doc["similarity"]),
                            {m: np.array(v) for m, v in doc.get("per_module", {}).items()},
                            doc.get("zero_clients", []), doc.get("files", {}), space, skipped=True)


def gram_pass(data: RoundData, digests: Digests, need_model_gram: bool, space: str,
              scales: np.ndarray | None = None) -> tuple[RoundStats, list[str | None]]:
    """The round's Gram matrices, and the sha256 of the task vector bytes they were computed from
    (hashed from the pass's own reads; None for a file it could not vouch for)."""
    hashes = digests.read_hashes(tv.header for tv in data.taskvecs)
    with FileSource(hashes) as source:
        stats = round_stats(data.reader(source), need_model_gram=need_model_gram, space=space, scales=scales)
    used = digests.finish_reading(hashes)
    return stats, [used[tv.path] for tv in data.taskvecs]


def _similarity_outputs(ws: Workspace, t: int, data: RoundData, stats, used: list[str | None], layer_wise: bool,
                        plot: bool, space: str, digests: Digests, t0: float) -> SimilarityResult:
    """Cosines from the Gram matrices; similarity.json/.csv/.png and the manifest entry."""
    sims = cosines(stats.task_grams)
    result = SimilarityResult(t, list(data.clients), sims[GLOBAL],
                              {m: s for m, s in sims.items() if m != GLOBAL} if layer_wise else {},
                              [data.clients[i] for i in zero_clients(stats.task_grams[GLOBAL])], space=space)
    out = ws.round_dir(t)
    paths = {"json": out / "similarity.json", "csv": out / "similarity.csv", "grams": out / gram_cache.FILE}
    before = {p: p.stat().st_mtime_ns for p in [*paths.values(), out / "similarity.png"] if p.exists()}
    try:
        atomic.write_text(paths["csv"], matrix_csv(list(data.clients), result.matrix))
        if None not in used:  # saved with the digests of the very bytes they came from
            gram_cache.save_grams(paths["grams"], stats.task_grams, space, list(data.clients), used)
        if plot:
            from fedbip_cli.plots import similarity_heatmap

            png = similarity_heatmap(result.matrix, data.clients, out / "similarity.png",
                                     f"Task-vector cosine, round {t}")
            if png:
                paths["png"] = png
        result.files = {k: ws.relative(v) for k, v in paths.items()}
        atomic.write_json(paths["json"], result.to_json())
        record_step(out, "similarity", inputs={tv.meta.client: tv.path for tv in data.taskvecs}, outputs=paths,
                    config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0, extra={"space": space},
                    digests=digests)
    except BaseException:  # a failed similarity leaves none of its outputs behind, old or half-new
        for p in [*paths.values(), out / "similarity.png"]:
            if p.exists() and before.get(p) != p.stat().st_mtime_ns:
                p.unlink()
        raise
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
    inputs = resolve_inputs(ws, t, inputs)
    settings = json.loads(json.dumps({"strategy": strat.name, "options": strat.options(), "space": space,
                                      "clip_factor": ws.config.aggregation.clip_factor}))
    with step_lock(ws.round_dir(t), "aggregate"):
        sweep_tree(ws.round_dir(t + 1))  # what killed runs of this step left among its outputs
        rerun = refuse_or_record(ws, t, inputs, settings, force)  # final rounds: steps/final_round.py
        if not force:
            done = finished_aggregate(ws, t, strat, inputs, space)
            if done is not None:
                return done
        return _aggregate(ws, t, inputs, strat, min_clients, space, rerun)


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


class StaleGrams(Exception):
    """The bytes aggregated are not those the saved Gram matrices came from."""


def _aggregate(ws: Workspace, t: int, inputs: Path | None, strat: Strategy, min_clients: int,
               space: str, rerun: dict | None = None) -> AggregateResult:
    """Clip, weigh and write the round's outputs, with Grams and clip bound proven to come from the
    bytes aggregated: every pass hashes the task vectors from its own reads, and outputs are swapped
    into place only when those digests equal the ones the Grams were computed from.

    When `similarity` saved Grams for digests the cache still holds, they are used and the task vectors
    are read once (by the output pass); should a file differ from what the Grams came from (rewritten
    in place, stat data restored), the outputs are dropped and the round is done again from the bytes.
    """
    t0 = time.perf_counter()
    factor = check_factor(ws.config.aggregation.clip_factor, f"{ws.config_path}: aggregation.clip_factor")
    with Digests(ws.root) as digests:
        data = load_round(ws, t, inputs, min_clients=min_clients, digests=digests)
        history = clip_history(ws, t, space)
        saved = None if strat.needs_model_gram else saved_stats(ws, t, data, space, digests)
        if saved is not None:
            try:
                return _aggregate_from(ws, t, data, strat, space, digests, t0, *saved, factor, history, StaleGrams, rerun)
            except StaleGrams:
                pass  # recompute from the bytes as they are now
        stats, used = gram_pass(data, digests, strat.needs_model_gram, space)
        return _aggregate_from(ws, t, data, strat, space, digests, t0, stats, used, factor, history, None, rerun)


def output_metadata(ws: Workspace, t: int, data: RoundData, mixing, strat: Strategy) -> tuple[dict, list[str]]:
    """Standard adapter_config fields and the model cards of round t's outputs (clients, then global)."""
    from fedbip_cli.core.files.adapter_meta import portable_base_name
    from fedbip_cli.steps.cards import aggregate_cards
    from fedbip_cli.workspace.model_path import base_model_name
    from fedbip_cli.workspace.task_types import task_type

    cfg = ws.config
    base = portable_base_name(data.starts[0].config.get("base_model_name_or_path"),
                              base_model_name(cfg.model.name, cfg.model.path))
    metadata = {"base_model_name_or_path": base, "task_type": task_type(cfg.task.type).peft_task_type}
    fingerprint = data.taskvecs[0].meta.base_fingerprint
    cards = aggregate_cards(ws, t, list(data.clients), mixing.matrix, strat.name, fingerprint)
    return metadata, cards


def _aggregate_from(ws: Workspace, t: int, data: RoundData, strat: Strategy, space: str, digests: Digests, t0: float,
                    stats: RoundStats, used: list[str | None], factor: float | None, history: float | None,
                    stale: type[Exception] | None, rerun: dict | None = None) -> AggregateResult:
    """Everything after the Grams: clipping, weights, outputs (checked against `used` before they are
    swapped in: a mismatch raises `stale` when given, else a UserError) and the records."""
    refuse_replays(data, stats.task_grams)
    clip = clip_round_norms(task_norms(stats), factor, history)

    def check(passed: list[str | None]) -> None:
        for tv, want, got in zip(data.taskvecs, used, passed):
            if want is not None and want == got:
                continue
            if stale is not None:
                raise stale(tv.path)
            if want is None or got is None:  # every pass reads every tensor once: not expected
                raise UserError(f"{tv.path}: the bytes aggregated could not be matched to those weighed "
                                f"(not every tensor was read exactly once); nothing written")
            raise UserError(f"{tv.path}: changed while the coordinator was reading it; nothing written, "
                            f"run aggregate again once the file is final")

    if clip.active and stats.model_grams is not None:  # model Grams of start + c tau: read again
        stats, again = gram_pass(data, digests, True, space, clip.scales)
        check(again)
    else:
        stats = clipped_stats(stats, clip)
    digests.prefetch([a.weights_path for a in data.starts])
    mixing = strat.mixing(stats)
    out_dirs = [ws.start_dir(t + 1, c) for c in data.clients]
    metadata, cards = output_metadata(ws, t, data, mixing, strat)
    hashes = digests.read_hashes(tv.header for tv in data.taskvecs)
    with FileSource(hashes) as source:
        written = write_round_outputs(
            data.reader(source), mixing, out_dirs, ws.global_dir(t + 1), space=space, scales=clip.scales,
            digests=digests, metadata=metadata, cards=cards,
            before_commit=lambda: check([digests.finish_reading(hashes)[tv.path] for tv in data.taskvecs]))
    return _aggregate_outputs(ws, t, data, strat, mixing, out_dirs, written, clip, space, digests, t0, rerun)


def clip_history(ws: Workspace, t: int, space: str) -> float | None:
    """The clip bound of the latest earlier round (same space) that set it by the median rule, for
    rounds with fewer than three non-zero task vectors (`core.engine.clipping`); None if there is none."""
    for earlier in range(t - 1, -1, -1):
        path = ws.round_dir(earlier) / "weights.json"
        if not path.is_file():
            continue
        doc = read_json(path)
        clip = doc.get("clip") if isinstance(doc, dict) else None
        if not isinstance(clip, dict) or doc.get("space") != space or clip.get("rule") != "median":
            continue
        bound = clip.get("bound")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not np.isfinite(bound) or bound <= 0:
            raise UserError(f"{path}: clip.bound must be a positive number, got {bound!r}")
        return float(bound)
    return None


def saved_stats(ws: Workspace, t: int, data: RoundData, space: str,
                digests: Digests) -> tuple[RoundStats, list[str]] | None:
    """The round's task Gram matrices as `similarity` saved them, with the task vector digests they
    were computed from, if those are the digests the cache holds for the files now (a hint only: the
    output pass proves it from the bytes it reads); None otherwise."""
    sha = [digests.cached(tv.path) for tv in data.taskvecs]
    grams = gram_cache.load_grams(ws.round_dir(t) / gram_cache.FILE, space, list(data.clients), sha)
    return (RoundStats(list(data.clients), data.num_examples, grams), sha) if grams is not None else None


def _aggregate_outputs(ws: Workspace, t: int, data: RoundData, strat: Strategy, mixing, out_dirs: list[Path],
                       written: Written, clip: Clip, space: str, digests: Digests, t0: float,
                       rerun: dict | None = None) -> AggregateResult:
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
    truncation = written.truncation
    clip_factor = ws.config.aggregation.clip_factor
    clipped = clip.record(list(data.clients))["clipped"]
    weights_path = ws.round_dir(t) / "weights.json"
    atomic.write_json(weights_path, {
        "round": t, "strategy": strat.name, "options": strat.options(), "mode": mixing.mode, "space": space,
        "clients": list(data.clients), "num_examples": data.num_examples.astype(int).tolist(),
        "weights": mixing.matrix.round(8).tolist(),
        "per_module": {m: w.round(8).tolist() for m, w in mixing.per_module.items()},
        "kept_previous_adapter": kept, "join_from_global": joining, "clip_factor": clip_factor, "clipped": clipped,
        "clip": clip.record(list(data.clients)), "capped_examples": capped_examples(data), "truncation": truncation,
        **written.ranks,
    })
    record_step(ws.round_dir(t), "aggregate",
                inputs={**{f"taskvec:{c}": tv.path for c, tv in zip(data.clients, data.taskvecs)},
                        **{f"start:{c}": a.weights_path for c, a in zip(data.clients, data.starts)},
                        **{f"start_config:{c}": a.folder / CONFIG_FILE for c, a in zip(data.clients, data.starts)}},
                outputs={**{c: Path(p) for c, p in outputs.items()}, "weights": weights_path},
                config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0,
                extra={"strategy": strat.name, "options": strat.options(), "space": space, "clients": list(data.clients),
                       "kept_previous_adapter": kept, "join_from_global": joining, "clip_factor": clip_factor,
                       "clipped": clipped,
                       "truncation_relative": {k: v["relative"] for k, v in truncation.items()} if truncation else None,
                       **(rerun or {})},
                digests=digests)
    return AggregateResult(t, strat.name, list(data.clients), mixing.matrix, mixing.mode, outputs, kept, space,
                           truncation)
