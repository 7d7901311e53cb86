"""Split one labelled corpus into a federation of clients whose data differ and conflict.

Three kinds of heterogeneity, combinable:
- label skew: each client's class proportions are drawn from Dirichlet(alpha) (small alpha: few
  dominant classes per client);
- a fixed number of classes per client: each client sees only `classes_per_client` classes;
- interest-conflict groups: clients are split into contiguous groups; group g relabels every
  example through a cyclic shift of the label set by g, so the same text means another label to it.

Every client's train / validation / test splits follow that client's own class proportions, and no
example is used twice (across clients or splits). Pure python + numpy; `write_federation` writes the
JSONL files and a fedbip.yaml through `site.init_workspace`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.regular import read_json
from fedbip_cli.errors import UserError
from fedbip_cli.steps.site import init_workspace

SPLITS = ("train", "validation", "test")
PARTITION_FILE = "partition.json"


@dataclass
class PartitionSpec:
    """How to split a corpus; the same spec and seed give the same federation."""

    clients: int = 10
    alpha: float | None = 0.5
    """Dirichlet concentration of each client's class proportions; None = uniform (IID)."""
    classes_per_client: int | None = None
    groups: int = 1
    """Interest-conflict groups; group g maps label i to label (i + g) mod C."""
    train: int = 100
    validation: int = 0
    test: int = 50
    seed: int = 0

    def check(self, num_labels: int) -> None:
        if self.clients < 1:
            raise UserError(f"--clients: must be at least 1, got {self.clients}")
        if self.alpha is not None and self.alpha <= 0:
            raise UserError(f"--alpha: must be positive, got {self.alpha}")
        if self.classes_per_client is not None and not 1 <= self.classes_per_client <= num_labels:
            raise UserError(f"--classes-per-client: must be between 1 and {num_labels}, got {self.classes_per_client}")
        if not 1 <= self.groups <= min(self.clients, num_labels):
            raise UserError(f"--groups: must be between 1 and {min(self.clients, num_labels)} "
                            f"(clients and labels), got {self.groups}")
        if min(self.train, self.validation, self.test) < 0 or self.train == 0:
            raise UserError("split sizes: train must be positive, validation and test non-negative")


@dataclass
class ClientPart:
    """One client's share: example indices per split (into the corpus), its group and proportions."""

    name: str
    group: int
    proportions: list[float]
    splits: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Partition:
    labels: list[str]
    spec: PartitionSpec
    clients: list[ClientPart]

    def mapping(self, group: int) -> list[str]:
        """The label a client of `group` writes for each original label (index-aligned with `labels`)."""
        return group_mapping(self.labels, group)

    def groups(self) -> dict[str, int]:
        return {c.name: c.group for c in self.clients}


def group_mapping(labels: Sequence[str], group: int) -> list[str]:
    """Cyclic shift by `group`: a permutation without fixed points for 0 < group < len(labels)."""
    c = len(labels)
    return [labels[(i + group) % c] for i in range(c)]


def group_of(k: int, clients: int, groups: int) -> int:
    """Contiguous, near-equal blocks: clients 0..K/G-1 form group 0, and so on."""
    return k * groups // clients


def client_name(k: int, group: int) -> str:
    return f"g{group}-c{k:02d}"


def class_proportions(spec: PartitionSpec, num_labels: int, rng: np.random.Generator) -> np.ndarray:
    """K x C class proportions: Dirichlet(alpha) (or uniform) over each client's allowed classes."""
    props = np.zeros((spec.clients, num_labels))
    for k in range(spec.clients):
        if spec.classes_per_client is not None:
            allowed = np.sort(rng.choice(num_labels, spec.classes_per_client, replace=False))
        else:
            allowed = np.arange(num_labels)
        if spec.alpha is None:
            p = np.full(len(allowed), 1.0 / len(allowed))
        else:
            p = rng.dirichlet(np.full(len(allowed), spec.alpha))
        props[k, allowed] = p
    return props


def split_counts(n: int, p: np.ndarray) -> np.ndarray:
    """Exactly n examples spread over classes as close to n*p as integers allow (largest remainders)."""
    exact = n * p
    counts = np.floor(exact).astype(int)
    short = n - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def partition(labels: Sequence[str], spec: PartitionSpec) -> Partition:
    """Assign corpus examples (by index) to clients and splits; `labels[i]` is example i's label."""
    names = sorted(set(labels))
    spec.check(len(names))
    rng = np.random.default_rng(spec.seed)
    index = {lab: i for i, lab in enumerate(names)}
    pools = [list(rng.permutation([i for i, lab in enumerate(labels) if index[lab] == c])) for c in range(len(names))]
    props = class_proportions(spec, len(names), rng)
    parts = []
    for k in range(spec.clients):
        g = group_of(k, spec.clients, spec.groups)
        part = ClientPart(client_name(k, g), g, props[k].round(6).tolist())
        for split in SPLITS:
            want = split_counts(getattr(spec, split), props[k])
            part.splits[split] = _draw(pools, want, props[k])
        if not part.splits["train"]:
            raise UserError(f"partition: the corpus ran out of examples for client {part.name}; "
                            f"use fewer clients or smaller splits")
        parts.append(part)
    return Partition(names, spec, parts)


def _draw(pools: list[list[int]], want: np.ndarray, p: np.ndarray) -> list[int]:
    """Take `want[c]` examples of each class; a class that ran out is made up from the client's others."""
    got = [min(int(w), len(pools[c])) for c, w in enumerate(want)]
    missing = int(want.sum()) - sum(got)
    while missing > 0:
        spare = np.array([(len(pools[c]) - got[c]) * (p[c] > 0) for c in range(len(pools))])
        if spare.sum() == 0:
            break
        c = int(np.argmax(np.where(spare > 0, p + 1e-12, -1.0)))
        got[c] += 1
        missing -= 1
    out = []
    for c, n in enumerate(got):
        out += pools[c][:n]
        del pools[c][:n]
    return sorted(int(i) for i in out)


def write_federation(root: str | Path, texts: Sequence[str], labels: Sequence[str], spec: PartitionSpec, *,
                     settings: dict[str, Any] | None = None, force: bool = False) -> Partition:
    """Partition the corpus and write data/<client>/<split>.jsonl, partition.json and fedbip.yaml.

    Conflict groups write their mapped labels, so each client's files are all it knows.
    """
    if len(texts) != len(labels):
        raise UserError(f"partition: {len(texts)} texts but {len(labels)} labels")
    root = Path(root)
    check_new_workspace(root, force)
    part = partition(labels, spec)
    orig = {lab: i for i, lab in enumerate(part.labels)}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for c in part.clients:
        mapping = part.mapping(c.group)
        rows[c.name] = {split: [{"text": texts[i], "label": mapping[orig[labels[i]]]} for i in idx]
                        for split, idx in c.splits.items()}
    clients = write_client_rows(root, rows)
    atomic.write_json(root / PARTITION_FILE, partition_doc(part, labels))
    init_workspace(root, labels=part.labels, clients=clients, settings=settings, force=force)  # last: marks done
    return part


def check_new_workspace(root: Path, force: bool) -> None:
    """UserError when `root` already holds a federation and --force was not given."""
    if (root / "fedbip.yaml").exists() and not force:
        raise UserError(f"{root / 'fedbip.yaml'}: already exists (use --force to overwrite)")


def write_client_rows(root: Path, rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, str]]:
    """data/<client>/<split>.jsonl for every non-empty split; returns fedbip.yaml's `clients` (relative paths)."""
    clients: dict[str, dict[str, str]] = {}
    for name, splits in rows.items():
        files = {}
        for split, items in splits.items():
            if not items:
                continue
            rel = f"data/{name}/{split}.jsonl"
            atomic.write_text(root / rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
            files[split] = rel
        clients[name] = files
    return clients


def partition_doc(part: Partition, labels: Sequence[str]) -> dict[str, Any]:
    """partition.json: the spec, each client's group, mapping and per-split counts of original labels."""
    clients = {}
    for c in part.clients:
        counts = {s: {lab: sum(1 for i in idx if labels[i] == lab) for lab in part.labels}
                  for s, idx in c.splits.items()}
        clients[c.name] = {"group": c.group, "label_mapping": dict(zip(part.labels, part.mapping(c.group))),
                           "proportions": dict(zip(part.labels, c.proportions)), "original_label_counts": counts}
    return {"format": "fedbip.partition/1", "labels": part.labels, "spec": asdict(part.spec), "clients": clients}


def read_groups(root: str | Path) -> dict[str, int] | None:
    """Client -> group from a workspace's partition.json, or None when it was not built by `partition`."""
    path = Path(root) / PARTITION_FILE
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
        return {name: int(c["group"]) for name, c in doc["clients"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable partition file: {e}") from None
