"""The coordinator's inputs: which task vectors arrived for a round, and whether they may be combined.

Where they are read from: the usage fedbip is specified by, `fedbip aggregate --round 3 --inputs
deltas/`, means the round's own deltas folder wherever the command runs. A relative --inputs is looked
up in the round folder, then the workspace root, then the current folder; the first that exists is used.

What is checked before anything is computed (`load_round`): every file comes from a client listed in
fedbip.yaml and says so in its metadata, all were made on one base model in one space with LoRA
settings that differ at most in rank and alpha, and each was trained from the start adapter the
coordinator holds for its client. Once the Grams are known, a replayed vector is refused
(`refuse_replays`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedbip_cli.core.engine.mixed_ranks import same_but_rank, same_shape_but_rank
from fedbip_cli.core.engine.round_data import RoundData
from fedbip_cli.core.files.adapter import CONFIG_FILE, Adapter, read_adapter
from fedbip_cli.core.files.client_names import check_client_name
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.files.regular import inside
from fedbip_cli.core.files.taskvec import TaskVector, open_taskvec, taskvec_layout
from fedbip_cli.core.strategies.similarity import GLOBAL
from fedbip_cli.errors import NotReady, UserError
from fedbip_cli.workspace.layout import Workspace


def resolve_inputs(ws: Workspace, t: int, inputs: str | Path | None) -> Path:
    """The folder of round t's task vectors. A missing folder is NotReady (exit 75) when it is the
    round's own deltas/ (nothing has arrived yet), bad input otherwise."""
    if inputs is None:
        candidates = [ws.deltas_dir(t)]
    else:
        p = Path(inputs)
        candidates = [p] if p.is_absolute() else [ws.round_dir(t) / p, ws.root / p, Path.cwd() / p]
    for folder in candidates:
        if folder.is_dir():
            return folder
    if any(_same(c, ws.deltas_dir(t)) for c in candidates):
        raise NotReady(f"{ws.deltas_dir(t)}: no task vector has arrived for round {t} yet")
    tried = ", ".join(dict.fromkeys(str(c.absolute()) for c in candidates))
    raise UserError(f"--inputs {inputs}: folder not found (looked in {tried})")


def _same(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()


def arrived_vectors(folder: Path) -> dict[str, Path]:
    """{client: task vector file} of a deltas folder, in file-name order (hidden names are uploads in
    progress); empty when the folder does not exist. The one list of a round's arrived task vectors."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors")) if not p.name.startswith(".")}


def load_round(ws: Workspace, t: int, inputs: Path | None = None, *, min_clients: int = 2,
               digests: Digests | None = None) -> RoundData:
    """Open and cross-check every task vector of round t, and the start adapters they came from.

    The task vectors' and start adapters' data are not read here (only headers, and the start
    adapters' sha256, from `digests` when it already knows them)."""
    inputs = resolve_inputs(ws, t, inputs)
    files = list(arrived_vectors(inputs).values())
    if len(files) < min_clients:
        raise NotReady(f"{inputs}: holds {len(files)} task vector(s); waiting for at least {min_clients}")
    tvs = [member_taskvec(ws, f, t, inputs) for f in files]
    _check_combinable(tvs)
    cache = Digests(ws.root) if digests is None else digests
    starts = [_start_of(ws, t, tv, cache) for tv in tvs]
    if digests is None:
        cache.close()
    return RoundData.load([tv.meta.client for tv in tvs], tvs, starts)


def _check_combinable(tvs: list[TaskVector]) -> None:
    """UserError unless every task vector agrees with the first on base model, space, LoRA settings
    (rank and alpha aside: core/engine/mixed_ranks.py) and tensor names and shapes."""
    first = tvs[0]
    for tv in tvs[1:]:
        if tv.meta.base_fingerprint != first.meta.base_fingerprint:
            raise UserError(f"{tv.path}: made on another base model than {first.path.name} (fingerprint mismatch)")
        if tv.meta.space != first.meta.space:
            raise UserError(f"{tv.path}: space {tv.meta.space!r} differs from {first.path.name}'s {first.meta.space!r}")
        if not same_but_rank(tv.meta.lora_config, first.meta.lora_config):
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


def _start_of(ws: Workspace, t: int, tv: TaskVector, digests: Digests) -> Adapter:
    """The start adapter the coordinator holds for the task vector's client, if the vector was made
    from it (same LoRA settings, sha256 and tensors; ranks may differ between clients, never from the
    client's own start)."""
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
    for n, (_, shape) in expected.items():
        if tv.header.tensors[n].shape != shape:
            raise UserError(f"{tv.path}: tensor {n!r} has shape {list(tv.header.tensors[n].shape)}, "
                            f"its start adapter {folder} needs {list(shape)}")
    return adapter


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
