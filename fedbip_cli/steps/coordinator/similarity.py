"""`similarity`: pairwise cosines of a round's task vectors, written as similarity.json/.csv(/.png).

Reads top-down: already done from these very vectors → return the record; else load and check the
round (`inputs.load_round`) → its Grams (`grams.read_grams`) → refuse replays → cosines → write the
files and the manifest entry, all of them or none. The Grams are saved beside (`gram_cache`) so that
`aggregate` need not read the task vectors twice.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedbip_cli import plots
from fedbip_cli.core.engine.round_data import RoundData
from fedbip_cli.core.files import atomic, gram_cache
from fedbip_cli.core.files.digest_cache import CACHE as DIGEST_CACHE
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.manifest import check_step, read_manifest, record_step
from fedbip_cli.core.strategies.similarity import GLOBAL, cosines, zero_clients
from fedbip_cli.steps.coordinator.final_round import refuse_similarity
from fedbip_cli.steps.coordinator.grams import Grams, read_grams
from fedbip_cli.steps.coordinator.inputs import (
    arrived_vectors,
    load_round,
    refuse_replays,
    resolve_inputs,
)
from fedbip_cli.workspace.layout import Workspace, read_json


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
    space = ws.config.aggregation.resolve_space(space)
    rd = ws.round_dir(t)  # every output checked before any work (layout.py)
    ws.check_writes(*(rd / n for n in ("similarity.json", "similarity.csv", "similarity.png", gram_cache.FILE)),
                    ws.manifest_path(t), ws.root / DIGEST_CACHE, folders=[rd])
    read_manifest(rd)  # a manifest that cannot record this step is refused before the outputs are replaced
    if not force:
        folder = resolve_inputs(ws, t, inputs)
        done = finished_similarity(ws, t, folder, space, layer_wise)
        if done is not None:
            return done
        refuse_similarity(ws, t, folder)  # final rounds: final_round.py
    with Digests(ws.root) as digests:
        data = load_round(ws, t, inputs, min_clients=min_clients, digests=digests)
        if plot:
            plots.preload()
        grams = read_grams(data, digests, False, space)
        refuse_replays(data, grams.stats.task_grams)
        return write_similarity(ws, t, data, grams, layer_wise, plot, space, digests, t0)


def finished_similarity(ws: Workspace, t: int, folder: Path, space: str, layer_wise: bool) -> SimilarityResult | None:
    """The recorded similarity of round t if it was computed in `space` from exactly the task vectors now
    in `folder` and its files are intact (per-module matrices too, when asked for), else None."""
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


def write_similarity(ws: Workspace, t: int, data: RoundData, grams: Grams, layer_wise: bool, plot: bool,
                     space: str, digests: Digests, t0: float) -> SimilarityResult:
    """Cosines from the Gram matrices; similarity.json/.csv/.png, the saved Grams and the manifest entry."""
    stats = grams.stats
    sims = cosines(stats.task_grams)
    result = SimilarityResult(t, list(data.clients), sims[GLOBAL],
                              {m: s for m, s in sims.items() if m != GLOBAL} if layer_wise else {},
                              [data.clients[i] for i in zero_clients(stats.task_grams[GLOBAL])], space=space)
    out = ws.round_dir(t)
    paths = {"json": out / "similarity.json", "csv": out / "similarity.csv", "grams": out / gram_cache.FILE}
    before = {p: p.stat().st_mtime_ns for p in [*paths.values(), out / "similarity.png"] if p.exists()}
    try:
        atomic.write_text(paths["csv"], matrix_csv(list(data.clients), result.matrix))
        sources = [s for s in grams.sources if s is not None]
        if len(sources) == len(grams.sources):  # saved with the digests of the very bytes they came from
            gram_cache.save_grams(paths["grams"], stats.task_grams, space, list(data.clients), sources)
        if plot:
            png = plots.similarity_heatmap(result.matrix, data.clients, out / "similarity.png",
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
