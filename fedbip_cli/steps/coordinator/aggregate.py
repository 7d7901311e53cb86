"""`aggregate`: personalized adapters for round T+1 from round T's task vectors, plus the global adapter.

`aggregate` takes the step lock, refuses what would rewrite a final round (final_round.py), returns the
record when this very aggregation already ran, and otherwise loads the round and runs an `Aggregation`,
whose steps read in order:

    load (inputs.load_round) → Grams → clip → weights → write → record

Grams and clip bound are proven to come from the bytes aggregated: every pass hashes the task vectors
from its own reads, and the output folders are swapped into place only when those digests equal the
ones the Grams came from (`Aggregation.verify`). When `similarity` saved Grams for the digests the
cache still holds, they are used and the task vectors are read once (by the output pass); should a file
differ from what they came from (rewritten in place, stat data restored), the outputs are dropped and
`Aggregation.run` goes once more from the bytes as they are now (the one retry).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fedbip_cli.core.engine.aggregate import (
    Written,
    clipped_stats,
    task_norms,
    write_round_outputs,
)
from fedbip_cli.core.engine.clipping import Clip, check_factor, clip_round_norms
from fedbip_cli.core.engine.round_data import FileSource, RoundData
from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.adapter import CONFIG_FILE, copy_adapter
from fedbip_cli.core.files.adapter_meta import portable_base_name
from fedbip_cli.core.files.atomic import sweep_tree
from fedbip_cli.core.files.digest_cache import CACHE as DIGEST_CACHE
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.locks import step_lock
from fedbip_cli.core.files.manifest import check_step, read_manifest, record_step
from fedbip_cli.core.strategies.base import Mixing, RoundStats, Strategy
from fedbip_cli.errors import UserError
from fedbip_cli.steps.cards import aggregate_cards
from fedbip_cli.steps.coordinator.final_round import refuse_or_record
from fedbip_cli.steps.coordinator.grams import Grams, read_grams, saved_grams
from fedbip_cli.steps.coordinator.inputs import (
    arrived_vectors,
    load_round,
    refuse_replays,
    resolve_inputs,
)
from fedbip_cli.workspace.layout import Workspace, read_json
from fedbip_cli.workspace.model_path import base_name
from fedbip_cli.workspace.task_types import task_type


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
    space = ws.config.aggregation.resolve_space(space)
    ws.check_writes(ws.round_dir(t) / "weights.json", ws.manifest_path(t), ws.root / DIGEST_CACHE,
                    folders=[ws.round_dir(t), ws.round_dir(t + 1), ws.global_dir(t + 1),
                             *(ws.start_dir(t + 1, c) for c in ws.config.clients)])  # before any work (layout.py)
    strat = strategy if isinstance(strategy, Strategy) else strategy_from_config(ws, strategy)
    inputs = resolve_inputs(ws, t, inputs)
    settings = json.loads(json.dumps({"strategy": strat.name, "options": strat.options(), "space": space,
                                      "clip_factor": ws.config.aggregation.clip_factor}))
    # one digest cache for the step: what the final-round check hashes, the saved Grams' check reuses; saved
    # only when the step ends well (a step that refuses its input leaves every file as it was)
    with step_lock(ws.round_dir(t), "aggregate"), Digests(ws.root) as digests:
        sweep_tree(ws.round_dir(t + 1))  # what killed runs of this step left among its outputs
        rerun = refuse_or_record(ws, t, inputs, settings, force, digests)  # final rounds: final_round.py
        if not force:
            done = finished_aggregate(ws, t, strat, inputs, space)
            if done is not None:
                return done
        t0 = time.perf_counter()
        factor = check_factor(ws.config.aggregation.clip_factor, f"{ws.config_path}: aggregation.clip_factor")
        data = load_round(ws, t, inputs, min_clients=min_clients, digests=digests)
        run = Aggregation(ws, t, data, strat, space, digests, factor, clip_history(ws, t, space), rerun, t0)
        return run.run()


def finished_aggregate(ws: Workspace, t: int, strat: Strategy, inputs: Path, space: str) -> AggregateResult | None:
    """The recorded result if this exact aggregation already ran and its files are intact, else None."""
    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get("aggregate")
    if entry is None or not inputs.is_dir():
        return None
    same = (entry.get("strategy") == strat.name and entry.get("options") == strat.options()
            and entry.get("space") == space and entry.get("clients") == sorted(arrived_vectors(inputs))
            and entry.get("clip_factor") == ws.config.aggregation.clip_factor)
    if not same or check_step(ws.round_dir(t), "aggregate", entry):
        return None
    doc = read_json(ws.round_dir(t) / "weights.json")
    outputs = {c: str(ws.start_dir(t + 1, c)) for c in doc["clients"]} | {"global": str(ws.global_dir(t + 1))}
    return AggregateResult(t, strat.name, doc["clients"], np.array(doc["weights"]), doc["mode"], outputs,
                           doc.get("kept_previous_adapter", []), space, doc.get("truncation"), skipped=True)


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


class StaleGrams(Exception):
    """The bytes the output pass read are not those the saved Gram matrices came from: raised by
    `Aggregation.verify`, caught by `Aggregation.run` alone."""


@dataclass
class Outputs:
    """What `Aggregation.write` put in place: {client or "global": folder}, and who kept or joins."""

    folders: dict[str, str]
    kept: list[str]
    """Configured clients that sent nothing this round and keep their own adapter."""
    joining: list[str]
    """Configured clients with no adapter yet: they start from rounds/T+1/global."""
    written: Written


@dataclass
class Aggregation:
    """One aggregation of a loaded round, its steps as methods in the order `run` calls them."""

    ws: Workspace
    t: int
    data: RoundData
    strat: Strategy
    space: str
    digests: Digests
    factor: float | None
    """aggregation.clip_factor, checked."""
    history: float | None
    """The clip bound of an earlier round, for rounds too small to set one (`clip_history`)."""
    rerun: dict | None
    """What a forced rerun records (final_round.refuse_or_record)."""
    t0: float

    def run(self) -> AggregateResult:
        """Grams → clip → weights → write → record; from `similarity`'s saved Grams when they still
        describe the files, else (or should the output pass find they do not) from the bytes."""
        saved = None if self.strat.needs_model_gram else saved_grams(self.ws, self.t, self.data, self.space,
                                                                      self.digests)
        if saved is not None:
            try:
                return self.from_grams(saved)
            except StaleGrams:
                pass  # a file differs from the bytes the saved Grams came from: once more from the bytes now
        return self.from_grams(read_grams(self.data, self.digests, self.strat.needs_model_gram, self.space))

    def from_grams(self, grams: Grams) -> AggregateResult:
        refuse_replays(self.data, grams.stats.task_grams)
        clip, stats = self.clip(grams)
        mixing = self.strat.mixing(stats)  # the weights
        outputs = self.write(grams, clip, mixing)
        return self.record(clip, mixing, outputs)

    def clip(self, grams: Grams) -> tuple[Clip, RoundStats]:
        """The round's clip multipliers, and the statistics of the clipped task vectors."""
        clip = clip_round_norms(task_norms(grams.stats), self.factor, self.history)
        if clip.active and grams.stats.model_grams is not None:  # model Grams of start + c tau: read again
            again = read_grams(self.data, self.digests, True, self.space, clip.scales)
            self.verify(grams, again.sources)
            return clip, again.stats
        return clip, clipped_stats(grams.stats, clip)

    def write(self, grams: Grams, clip: Clip, mixing: Mixing) -> Outputs:
        """Every client's personalized adapter and the global one (swapped in only once `verify` passed
        on the digests of the very reads they came from); copies of their own adapters for configured
        clients that sent nothing."""
        ws, t, data = self.ws, self.t, self.data
        self.digests.prefetch([a.weights_path for a in data.starts])
        out_dirs = [ws.start_dir(t + 1, c) for c in data.clients]
        metadata, cards = self.output_metadata(mixing)
        hashes = self.digests.read_hashes(tv.header for tv in data.taskvecs)
        with FileSource(hashes) as source:
            written = write_round_outputs(
                data.reader(source), mixing, out_dirs, ws.global_dir(t + 1), space=self.space, scales=clip.scales,
                digests=self.digests, metadata=metadata, cards=cards,
                before_commit=partial(self.verify_pass, grams, hashes))
        folders = {c: str(d) for c, d in zip(data.clients, out_dirs)}
        kept = []
        for c in ws.config.clients:
            if c not in folders and ws.start_dir(t, c).is_dir():
                copy_adapter(ws.start_dir(t, c), ws.start_dir(t + 1, c))
                folders[c] = str(ws.start_dir(t + 1, c))
                kept.append(c)
        joining = [c for c in ws.config.clients if c not in folders]
        folders["global"] = str(ws.global_dir(t + 1))
        return Outputs(folders, kept, joining, written)

    def record(self, clip: Clip, mixing: Mixing, outputs: Outputs) -> AggregateResult:
        """weights.json and the manifest entry; the result."""
        ws, t, data, strat = self.ws, self.t, self.data, self.strat
        clients = list(data.clients)
        truncation = outputs.written.truncation
        clip_factor = ws.config.aggregation.clip_factor
        clipped = clip.record(clients)["clipped"]
        weights_path = ws.round_dir(t) / "weights.json"
        atomic.write_json(weights_path, {
            "round": t, "strategy": strat.name, "options": strat.options(), "mode": mixing.mode, "space": self.space,
            "clients": clients, "num_examples": data.num_examples.astype(int).tolist(),
            "weights": mixing.matrix.round(8).tolist(),
            "per_module": {m: w.round(8).tolist() for m, w in mixing.per_module.items()},
            "kept_previous_adapter": outputs.kept, "join_from_global": outputs.joining, "clip_factor": clip_factor,
            "clipped": clipped, "clip": clip.record(clients), "capped_examples": capped_examples(data),
            "truncation": truncation, **outputs.written.ranks,
        })
        record_step(ws.round_dir(t), "aggregate",
                    inputs={**{f"taskvec:{c}": tv.path for c, tv in zip(clients, data.taskvecs)},
                            **{f"start:{c}": a.weights_path for c, a in zip(clients, data.starts)},
                            **{f"start_config:{c}": a.folder / CONFIG_FILE for c, a in zip(clients, data.starts)}},
                    outputs={**{c: Path(p) for c, p in outputs.folders.items()}, "weights": weights_path},
                    config_sha256=ws.config_sha256(), seconds=time.perf_counter() - self.t0,
                    extra={"strategy": strat.name, "options": strat.options(), "space": self.space,
                           "clients": clients, "kept_previous_adapter": outputs.kept,
                           "join_from_global": outputs.joining, "clip_factor": clip_factor, "clipped": clipped,
                           "truncation_relative": {k: v["relative"] for k, v in truncation.items()}
                           if truncation else None,
                           **(self.rerun or {})},
                    digests=self.digests)
        return AggregateResult(t, strat.name, clients, mixing.matrix, mixing.mode, outputs.folders, outputs.kept,
                               self.space, truncation)

    def verify(self, grams: Grams, read: list[str | None]) -> None:
        """Raise unless `read` (per client, the digest of the bytes a pass read) is what `grams` came
        from: StaleGrams for saved Grams (`run` goes again from the bytes), else a UserError."""
        for tv, want, got in zip(self.data.taskvecs, grams.sources, read):
            if want is not None and want == got:
                continue
            if grams.saved:
                raise StaleGrams(tv.path)
            if want is None or got is None:  # every pass reads every tensor once: not expected
                raise UserError(f"{tv.path}: the bytes aggregated could not be matched to those weighed "
                                f"(not every tensor was read exactly once); nothing written")
            raise UserError(f"{tv.path}: changed while the coordinator was reading it; nothing written, "
                            f"run aggregate again once the file is final")

    def verify_pass(self, grams: Grams, hashes: dict) -> None:
        """`verify` on the digests of the output pass that read through `hashes` (its before_commit)."""
        done = self.digests.finish_reading(hashes)
        self.verify(grams, [done[tv.path] for tv in self.data.taskvecs])

    def output_metadata(self, mixing: Mixing) -> tuple[dict, list[str]]:
        """Standard adapter_config fields and the model cards of the outputs (clients, then global)."""
        cfg, data = self.ws.config, self.data
        base = portable_base_name(data.starts[0].config.get("base_model_name_or_path"),
                                  base_name(cfg))
        metadata = {"base_model_name_or_path": base, "task_type": task_type(cfg.task.type).peft_task_type}
        fingerprint = data.taskvecs[0].meta.base_fingerprint
        cards = aggregate_cards(self.ws, self.t, list(data.clients), mixing.matrix, self.strat.name, fingerprint)
        return metadata, cards


def capped_examples(data: RoundData) -> dict[str, dict[str, int]]:
    """Clients whose num_examples was capped at their declared max_examples: {client: {sent, used}}."""
    out = {}
    for c, tv in zip(data.clients, data.taskvecs):
        sent = int(tv.header.metadata["num_examples"])
        if sent != tv.meta.num_examples:
            out[c] = {"sent": sent, "used": tv.meta.num_examples}
    return out
