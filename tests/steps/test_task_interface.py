"""A new task type is one module plus one registry line: a toy text-regression type, implemented in
tests/steps/toy_regression_task.py and registered here, goes through the real site steps (initial,
finetune, taskvec, eval, predict, export) and the coordinator's (similarity, aggregate) on a tiny random
BERT, with no edit anywhere in fedbip_cli."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
from pathlib import Path

import pytest

from fedbip_cli.workspace import task_types
from helpers import FILLER, TOPICS, write_jsonl

TOY = "text-regression"


def regression_rows(n: int, seed: int, share: float) -> list[dict]:
    """Texts mixing sport words (about `share` of them) with filler; target: the share of sport words."""
    rng = random.Random(seed)
    sport, filler = TOPICS["sport"].split(), FILLER.split()
    rows = []
    for _ in range(n):
        words = [rng.choice(sport) if rng.random() < share else rng.choice(filler) for _ in range(rng.randint(4, 12))]
        rows.append({"text": " ".join(words), "target": sum(w in sport for w in words) / len(words)})
    return rows


@pytest.fixture
def toy_type(monkeypatch) -> task_types.TaskType:
    """The one registry line of the new type (monkeypatched: the type lives in tests/, not in fedbip_cli)."""
    line = task_types.TaskType("toy_regression_task:TextRegression", peft_task_type=None, uses_labels=False,
                               metrics=("mae", "loss"), headline="mae")
    monkeypatch.setitem(task_types.TASK_TYPES, TOY, line)
    return line


@pytest.fixture
def toy_workspace(tmp_path, tiny_bert, toy_type):
    """Two sites with regression data on the tiny BERT; task.type is the toy type."""
    from fedbip_cli.steps.site import init_workspace
    from fedbip_cli.workspace.config import load_config
    from fedbip_cli.workspace.layout import Workspace

    root = tmp_path / "ws"
    spec = {}
    for k, (name, share) in enumerate({"a": 0.3, "b": 0.7}.items()):
        write_jsonl(root / "data" / name / "train.jsonl", regression_rows(24, k, share))
        write_jsonl(root / "data" / name / "test.jsonl", regression_rows(8, 50 + k, share))
        spec[name] = {"train": f"data/{name}/train.jsonl", "test": f"data/{name}/test.jsonl"}
    init_workspace(root, model_path=str(tiny_bert), clients=spec,
                   settings={"training.batch_size": 8, "training.epochs": 3, "training.learning_rate": 5e-3,
                             "model.max_length": 32, "lora.r": 4})
    cfg = load_config(root / "fedbip.yaml")
    # task.type's choices in the config are still a Literal of the three packaged types (the config will
    # take them from task_types.task_type_names()); so the toy type is set on the parsed config
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, type=TOY))
    return Workspace.open(root, config=cfg)


def test_registry_is_light_and_names_every_type():
    # Execute
    names = task_types.task_type_names()
    # Assert
    assert names == ("text-classification", "causal-lm", "image-classification")
    for name in names:
        spec = task_types.task_type(name)
        assert spec.headline in spec.metrics and "loss" in spec.metrics
        assert ":" in spec.implementation
    with pytest.raises(task_types.UserError, match="task.type: unknown task type 'nope'"):
        task_types.task_type("nope")


def test_a_fourth_task_type_runs_through_the_real_steps(toy_workspace, toy_type, tmp_path):
    from fedbip_cli.core.files.taskvec import open_taskvec
    from fedbip_cli.steps import coordinator, site
    from fedbip_cli.steps.export import export
    from fedbip_cli.steps.predict import predict

    # Prepare
    ws = toy_workspace
    rt = site.SiteRuntime(ws)
    assert type(rt.task).__name__ == "TextRegression" and rt.labels == []  # no label map for this type
    # Execute
    site.make_initial(ws, rt)
    before = {c: site.evaluate(ws, c, 0, adapter=ws.initial_dir, runtime=rt, log=False) for c in ws.config.clients}
    trained = {c: site.finetune(ws, c, 0, runtime=rt) for c in ws.config.clients}
    vectors = {c: site.taskvec(ws, c, 0) for c in ws.config.clients}
    coordinator.similarity(ws, 0, plot=False)
    coordinator.aggregate(ws, 0)
    after = {c: site.evaluate(ws, c, 1, runtime=rt) for c in ws.config.clients}
    sink = io.StringIO()
    rows = tmp_path / "new.jsonl"
    write_jsonl(rows, [{"text": "match goal team"}, {"text": "the of and"}])
    summary = predict(ws, "a", 1, rows, sink, runtime=rt)
    exported = export(ws, "a", 1, tmp_path / "export", runtime=rt)
    # Assert
    for c in ws.config.clients:
        assert set(after[c]) >= {*toy_type.metrics, "examples"} and after[c]["examples"] == 8
        assert all(math.isfinite(after[c][m]) for m in toy_type.metrics)
        assert after[c]["mae"] < before[c]["mae"], (before[c], after[c])  # the trained head and LoRA learned
        assert trained[c]["steps"] == 9 and trained[c]["num_examples"] == 24
        tv = open_taskvec(vectors[c])
        assert tv.meta.client == c and any(n.endswith("head.weight") for n in tv.header.tensors)
        config = json.loads((ws.start_dir(1, c) / "adapter_config.json").read_text())
        assert config["task_type"] is None  # the registry line's PEFT task type, written without torch
        card = (ws.start_dir(1, c) / "README.md").read_text()
        assert "pipeline_tag" not in card and f"({TOY})" in card and "labels (class index order)" not in card
    logged = [json.loads(line) for line in ws.metrics_path.read_text().splitlines()]
    assert [(r["client"], r["round"]) for r in logged] == [("a", 1), ("b", 1)]
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [r["row"] for r in lines] == [1, 2] and all(isinstance(r["value"], float) for r in lines)
    assert summary["rows"] == 2 and "label_counts" not in summary
    assert exported["route"] == "transformers"
    exported_card = (Path(exported["out"]) / "README.md").read_text()
    assert 'base = AutoModel.from_pretrained("' in exported_card and "num_labels" not in exported_card


def test_predict_reports_the_toy_types_bad_rows(toy_workspace, tmp_path):
    from fedbip_cli.errors import BadRows
    from fedbip_cli.steps.predict import read_rows
    from fedbip_cli.steps.site import SiteRuntime

    # Prepare
    rows = tmp_path / "bad.jsonl"
    write_jsonl(rows, [{"text": "goal"}, {"text": ""}, {"other": 1}])
    task = SiteRuntime(toy_workspace).task
    # Execute
    with pytest.raises(BadRows) as caught:
        read_rows(task, rows)
    # Assert
    assert str(caught.value).splitlines() == [f"{rows}:2: field 'text' must be a non-empty string",
                                              f"{rows}:3: field 'text' must be a non-empty string"]
