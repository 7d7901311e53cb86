"""Partitioning a labelled corpus into a federation: label counts, disjoint splits, conflict mapping."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fedbip_cli.errors import UserError
from fedbip_cli.sim.partition import (
    PartitionSpec,
    group_mapping,
    partition,
    split_counts,
    write_federation,
)

LABELS = ["a", "b", "c", "d"]


def corpus(per_class: int = 200) -> tuple[list[str], list[str]]:
    labels = [lab for lab in LABELS for _ in range(per_class)]
    return [f"text {i} about {lab}" for i, lab in enumerate(labels)], labels


def test_split_counts_sum_and_follow_proportions():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    counts = split_counts(11, p)
    assert counts.sum() == 11 and counts[3] == 0
    assert np.abs(counts - 11 * p).max() < 1


def test_splits_are_disjoint_and_follow_each_clients_proportions():
    # Prepare
    _, labels = corpus()
    spec = PartitionSpec(clients=6, alpha=0.3, train=40, validation=10, test=20, seed=3)
    # Execute
    part = partition(labels, spec)
    # Assert
    seen: list[int] = []
    for c in part.clients:
        for split, n in (("train", 40), ("validation", 10), ("test", 20)):
            idx = c.splits[split]
            assert len(idx) == n
            counts = Counter(labels[i] for i in idx)
            expected = split_counts(n, np.array(c.proportions))
            assert [counts.get(lab, 0) for lab in LABELS] == expected.tolist()
            seen += idx
    assert len(seen) == len(set(seen))  # no example twice, across clients and splits


def test_classes_per_client_limits_labels():
    _, labels = corpus()
    part = partition(labels, PartitionSpec(clients=5, alpha=None, classes_per_client=2, train=20, test=10))
    for c in part.clients:
        assert sum(p > 0 for p in c.proportions) == 2
        for idx in c.splits.values():
            assert len({labels[i] for i in idx}) <= 2


def test_dirichlet_alpha_controls_skew():
    _, labels = corpus(2000)
    skewed = partition(labels, PartitionSpec(clients=20, alpha=0.1, train=50, test=0))
    flat = partition(labels, PartitionSpec(clients=20, alpha=100.0, train=50, test=0))

    def top(part):
        return np.mean([max(c.proportions) for c in part.clients])

    assert top(skewed) > 0.7 > 0.4 > top(flat)


def test_same_seed_same_partition_other_seed_differs():
    _, labels = corpus()
    a = partition(labels, PartitionSpec(seed=1, clients=4, train=20, test=5))
    b = partition(labels, PartitionSpec(seed=1, clients=4, train=20, test=5))
    c = partition(labels, PartitionSpec(seed=2, clients=4, train=20, test=5))
    assert [x.splits for x in a.clients] == [x.splits for x in b.clients]
    assert [x.splits for x in a.clients] != [x.splits for x in c.clients]


def test_conflict_groups_write_permuted_labels(tmp_path):
    # Prepare
    texts, labels = corpus()
    spec = PartitionSpec(clients=4, alpha=1.0, groups=2, train=30, test=10)
    # Execute
    part = write_federation(tmp_path, texts, labels, spec)
    # Assert
    assert [c.group for c in part.clients] == [0, 0, 1, 1]
    assert group_mapping(LABELS, 1) == ["b", "c", "d", "a"]
    truth = dict(zip(texts, labels))
    for c in part.clients:
        rows = [json.loads(line) for line in (tmp_path / f"data/{c.name}/train.jsonl").read_text().splitlines()]
        mapping = dict(zip(LABELS, group_mapping(LABELS, c.group)))
        assert all(r["label"] == mapping[truth[r["text"]]] for r in rows)
        if c.group == 1:
            assert all(r["label"] != truth[r["text"]] for r in rows)
    doc = json.loads((tmp_path / "partition.json").read_text())
    assert doc["clients"]["g1-c02"]["label_mapping"]["a"] == "b"
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(tmp_path)
    assert list(ws.config.clients) == [c.name for c in part.clients] and ws.config.task.labels == LABELS
    assert ws.config.clients["g0-c00"].validation is None


def test_corpus_running_out_is_made_up_from_other_classes():
    labels = ["a"] * 10 + ["b"] * 500
    part = partition(labels, PartitionSpec(clients=2, alpha=None, train=40, test=0))
    assert all(len(c.splits["train"]) == 40 for c in part.clients)
    assert sum(labels[i] == "a" for c in part.clients for i in c.splits["train"]) == 10


@pytest.mark.parametrize("kw", [{"groups": 5}, {"alpha": 0.0}, {"classes_per_client": 9}, {"train": 0}])
def test_bad_specs_are_user_errors(kw):
    _, labels = corpus(10)
    with pytest.raises(UserError):
        partition(labels, PartitionSpec(clients=4, **kw))


def test_partition_cli_from_a_file(cli, tmp_path):
    texts, labels = corpus(50)
    src = tmp_path / "all.jsonl"
    src.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels)))
    r = cli("partition", tmp_path / "fed", "--input", src, "--clients", 4, "--groups", 2, "--train", 10,
            "--test", 5, "--set", "training.epochs=2")
    assert r.exit_code == 0, r.output
    from fedbip_cli.workspace.layout import Workspace

    cfg = Workspace.open(tmp_path / "fed").config
    assert len(cfg.clients) == 4 and cfg.training.epochs == 2.0
    r = cli("partition", tmp_path / "bad", "--input", src, "--groups", 9)
    assert r.exit_code == 2 and "--groups" in r.output
