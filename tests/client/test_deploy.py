"""Deployable adapters (issue 13): every adapter fedbip writes, and every `fedbip export`, loads in a
process that imports only transformers, peft and sentence-transformers, and predicts what `fedbip
eval` computes; a standard class that cannot hold fedbip's model refuses to load (never half-loads);
no output names a path of the machine that wrote it; `fedbip predict` streams predictions and
reports every bad row.

The tiny models sit in a Hugging Face cache layout (`models--fedbip-test--NAME/snapshots/...`), as a
hub download would, so adapters record a hub id and the standard loaders find the base by it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_jsonl

LABELS3 = ["money", "sport", "tech"]


def hub_snapshot(hub: Path, repo: str, source: Path) -> Path:
    """Copy a model folder into a Hugging Face cache as `repo` (what a hub download leaves)."""
    org, name = repo.split("/")
    root = hub / f"models--{org}--{name}"
    snap = root / "snapshots" / ("0" * 40)
    if not snap.is_dir():
        shutil.copytree(source, snap)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text("0" * 40)
    return snap


def run_standard(script: str, hub: Path, cwd: Path) -> dict:
    """Run `script` in a fresh interpreter that must not import fedbip; it prints one JSON object."""
    guard = ("\nimport sys as _s\nassert not [m for m in _s.modules if m.startswith('fedbip')], 'fedbip imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + script + guard],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fedbip_logits(ws_root: Path, client: str, t: int) -> tuple[torch.Tensor, object]:
    """Logits of the adapter `fedbip eval -r t` scores, on the client's test split, and the split."""
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(ws_root)
    rt = SiteRuntime(ws)
    cm = rt.model_for(client)
    cm.load(ws.resolve_start(t, client))
    data = rt.split(client, "test")
    return rt.task.predict_logits(cm, data, rt.pad_id), data


def lora_effect(ws_root: Path, client: str, t: int) -> float:
    """Largest change the adapter's LoRA factors make to the client's test logits (B zeroed vs not):
    a loader that dropped them would have to miss by this much."""
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(ws_root)
    rt = SiteRuntime(ws)
    cm = rt.model_for(client)
    cm.load(ws.resolve_start(t, client))
    data = rt.split(client, "test")
    full = rt.task.predict_logits(cm, data, rt.pad_id)
    cm.load_state({k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in cm.trainable_state().items()})
    return float((full - rt.task.predict_logits(cm, data, rt.pad_id)).abs().max())


def one_round(ws_root: Path, clients: list[str], evaluate: bool = True) -> None:
    from fedbip_cli.steps.coordinator import aggregate
    from fedbip_cli.steps.site import evaluate as eval_step
    from fedbip_cli.steps.site import finetune, taskvec
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(ws_root)
    for c in clients:
        finetune(ws, c, 0)
        taskvec(ws, c, 0)
    aggregate(ws, 0)
    if evaluate:
        eval_step(ws, clients[0], 1)


def machine_paths_in(folder: Path, needles: list[str]) -> list[str]:
    """Files under `folder` (not the user's own fedbip.yaml, data or fedbip's machine-local cache) that
    hold any of `needles`."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if not path.is_file() or rel[0] in ("fedbip.yaml", "data", ".fedbip") or path.name.startswith("."):
            continue
        data = path.read_bytes()
        if any(n.encode() in data for n in needles):
            found.append(str(path.relative_to(folder)))
    return found


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_bert, tiny_llama, tiny_vit) -> Path:
    hub = tmp_path_factory.mktemp("hub")
    for repo, src in (("fedbip-test/tiny-bert", tiny_bert), ("fedbip-test/tiny-llama", tiny_llama),
                      ("fedbip-test/tiny-vit", tiny_vit)):
        hub_snapshot(hub, repo, src)
    return hub


def snapshot(hub: Path, name: str) -> Path:
    return next((hub / f"models--fedbip-test--{name}" / "snapshots").iterdir())


@pytest.fixture(scope="module")
def text_round(build_workspace, hub, tmp_path_factory):
    """pooling mean (the default): one round, client a evaluated on round 1."""
    root = tmp_path_factory.mktemp("mean") / "ws"
    build_workspace(root, {"a": ["sport", "money"], "b": ["tech", "money"]}, n_train=8, n_test=5)
    text = (root / "fedbip.yaml").read_text()
    (root / "fedbip.yaml").write_text(text.replace("path: ", f"path: {snapshot(hub, 'tiny-bert')}  #", 1))
    one_round(root, ["a", "b"])
    return root


def test_adapters_carry_standard_metadata_and_a_card(text_round):
    # Prepare
    folders = [text_round / "initial", text_round / "rounds/0000/trained/a", text_round / "rounds/0001/start/a",
               text_round / "rounds/0001/global"]
    # Execute
    configs = [json.loads((f / "adapter_config.json").read_text()) for f in folders]
    cards = [(f / "README.md").read_text() for f in folders]
    weights = json.loads((text_round / "rounds/0000/weights.json").read_text())
    # Assert
    for config in configs:
        assert config["base_model_name_or_path"] == "fedbip-test/tiny-bert"
        assert config["task_type"] == "SEQ_CLS"
        assert not (config.get("auto_mapping") or {}).get("parent_library", "").startswith("fedbip_cli")
    for card in cards:
        assert card.startswith("---\nbase_model: fedbip-test/tiny-bert\n") and "fedbip version: " in card
    own = weights["weights"][0][0]
    assert f"own weight: {own:.4f}" in cards[2] and "client: `a`" in cards[2] and "fingerprint" in cards[2]
    assert "final_loss" in cards[1]


def test_mean_pooled_exports_load_in_sentence_transformers_with_evals_logits(text_round, hub, cli, tmp_path):
    # Prepare
    expected, _ = fedbip_logits(text_round, "a", 1)
    texts = [json.loads(line)["text"] for line in (text_round / "data/a/test.jsonl").read_text().splitlines()]
    for merge in ("", "--merge"):
        result = cli("export", "-c", "a", "-r", 1, "-w", text_round, "--out", tmp_path / f"x{merge}",
                     *([merge] if merge else []))
        assert result.exit_code == 0, result.output
    script = f"""
import json
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForSequenceClassification
from peft import PeftModel
texts = {texts!r}
out = {{}}
for name in ("x", "x--merge"):
    out[name] = SentenceTransformer(name, device="cpu").encode(texts, convert_to_tensor=True).tolist()
try:  # a standard class that pools differently must refuse fedbip's own adapter, not half-load it
    base = AutoModelForSequenceClassification.from_pretrained("fedbip-test/tiny-bert", num_labels=3)
    PeftModel.from_pretrained(base, {str(text_round / "rounds/0001/start/a")!r})
    out["refused"] = None
except ValueError as e:
    out["refused"] = str(e)
print(json.dumps(out))
"""
    # Execute
    got = run_standard(script, hub, tmp_path)
    # Assert
    assert lora_effect(text_round, "a", 1) > 1e-3  # so a dropped adapter could not pass unnoticed
    for name in ("x", "x--merge"):
        assert torch.allclose(torch.tensor(got[name]), expected, atol=1e-4), name
    assert got["refused"] and "target" in got["refused"]  # peft: no target module found
    assert json.loads((tmp_path / "x" / "labels.json").read_text()) == LABELS3
    card = (tmp_path / "x" / "README.md").read_text()
    assert "## Evaluation" in card and "accuracy" in card  # the eval of round 1 ran before the export


def test_cls_pooling_loads_in_auto_model_for_sequence_classification(build_workspace, hub, cli, tmp_path):
    # Prepare
    root = tmp_path / "ws"
    build_workspace(root, {"a": ["sport", "money"], "b": ["tech", "money"]}, n_train=8, n_test=5,
                    **{"pooling: mean": "pooling: cls"})
    text = (root / "fedbip.yaml").read_text()
    (root / "fedbip.yaml").write_text(text.replace("path: ", f"path: {snapshot(hub, 'tiny-bert')}  #", 1))
    one_round(root, ["a", "b"], evaluate=False)
    expected, data = fedbip_logits(root, "a", 1)
    assert cli("export", "-c", "a", "-r", 1, "-w", root, "--out", tmp_path / "m", "--merge").exit_code == 0
    script = f"""
import json, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer
ids = {[list(x) for x in data.input_ids]!r}
def logits(model):
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([x])).logits[0].tolist() for x in ids]
adapter = AutoPeftModelForSequenceClassification.from_pretrained({str(root / "rounds/0001/start/a")!r}, num_labels=3)
merged = AutoModelForSequenceClassification.from_pretrained("m")
print(json.dumps({{"adapter": logits(adapter), "merged": logits(merged), "labels": merged.config.id2label}}))
"""
    # Execute
    got = run_standard(script, hub, tmp_path)
    # Assert
    assert torch.allclose(torch.tensor(got["adapter"]), expected, atol=1e-4)
    assert torch.allclose(torch.tensor(got["merged"]), expected, atol=1e-4)
    assert list(got["labels"].values()) == LABELS3


@pytest.fixture(scope="module")
def lm_round(hub, tmp_path_factory):
    from test_causal_lm import build_lm_workspace

    root = build_lm_workspace(tmp_path_factory.mktemp("lm") / "ws", snapshot(hub, "tiny-llama"),
                              {"copy": "copy", "first": "first"})
    one_round(root, ["copy", "first"], evaluate=False)
    return root


def test_causal_lm_adapter_loads_with_auto_peft_and_peft_model(lm_round, hub, cli, tmp_path):
    # Prepare
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(lm_round)
    rt = SiteRuntime(ws)
    cm = rt.model_for("copy")
    cm.load(ws.resolve_start(1, "copy"))
    data = rt.split("copy", "test")
    with torch.no_grad():
        expected = [cm.model(input_ids=torch.tensor([x])).logits[0] for x in data.input_ids]
    assert cli("export", "-c", "copy", "-r", 1, "-w", lm_round, "--out", tmp_path / "m", "--merge").exit_code == 0
    folder = str(lm_round / "rounds/0001/start/copy")
    script = f"""
import json, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
ids = {[list(x) for x in data.input_ids]!r}
def logits(model):
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([x])).logits[0].tolist() for x in ids]
out = {{"auto": logits(AutoPeftModelForCausalLM.from_pretrained({folder!r})),
       "peft": logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("fedbip-test/tiny-llama"),
                                                {folder!r})),
       "merged": logits(AutoModelForCausalLM.from_pretrained("m"))}}
print(json.dumps(out))
"""
    # Execute
    got = run_standard(script, hub, tmp_path)
    # Assert
    cm.load_state({k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in cm.trainable_state().items()})
    with torch.no_grad():
        plain = [cm.model(input_ids=torch.tensor([x])).logits[0] for x in data.input_ids]
    assert max(float((e - p).abs().max()) for e, p in zip(expected, plain)) > 1e-3  # LoRA matters here
    config = json.loads((lm_round / "rounds/0001/start/copy/adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == "fedbip-test/tiny-llama"
    for name in ("auto", "peft", "merged"):
        for g, e in zip(got[name], expected):
            assert torch.allclose(torch.tensor(g), e, atol=1e-4), name


def build_image_workspace(root: Path, model: Path) -> Path:
    from test_image_classification import write_npz

    from fedbip_cli.steps.site import init_workspace

    rng = np.random.default_rng(0)
    for name, labels in (("a", ["top", "bottom"]), ("b", ["top", "left"])):
        write_npz(root / f"data/{name}/train.npz", labels, 4, rng)
        write_npz(root / f"data/{name}/test.npz", labels, 2, rng)
    init_workspace(root, model_path=str(model),
                   clients={n: {"train": f"data/{n}/train.npz", "test": f"data/{n}/test.npz"} for n in "ab"})
    text = (root / "fedbip.yaml").read_text().replace("type: text-classification", "type: image-classification")
    (root / "fedbip.yaml").write_text(text.replace("batch_size: 16", "batch_size: 4").replace("r: 8  ", "r: 4  "))
    return root


def test_image_adapter_and_merged_export_match_eval(hub, cli, tmp_path):
    # Prepare
    from fedbip_cli.client.tasks.image.data import load_image

    root = build_image_workspace(tmp_path / "ws", snapshot(hub, "tiny-vit"))
    one_round(root, ["a", "b"], evaluate=False)
    expected, data = fedbip_logits(root, "a", 1)
    images = np.stack([load_image(x, 3) for x in data.images])
    np.save(tmp_path / "images.npy", images)
    assert cli("export", "-c", "a", "-r", 1, "-w", root, "--out", tmp_path / "m", "--merge").exit_code == 0
    folder = str(root / "rounds/0001/start/a")
    script = f"""
import json, numpy as np, torch
from peft import PeftModel
from transformers import AutoImageProcessor, AutoModelForImageClassification
images = list(np.load("images.npy"))
processor = AutoImageProcessor.from_pretrained("m")
pixels = processor(images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
def logits(model):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits.tolist()
base = AutoModelForImageClassification.from_pretrained("fedbip-test/tiny-vit", num_labels=3,
                                                       ignore_mismatched_sizes=True)
print(json.dumps({{"peft": logits(PeftModel.from_pretrained(base, {folder!r})),
                  "merged": logits(AutoModelForImageClassification.from_pretrained("m"))}}))
"""
    # Execute
    got = run_standard(script, hub, tmp_path)
    # Assert
    for name in ("peft", "merged"):
        assert torch.allclose(torch.tensor(got[name]), expected, atol=1e-4), name


def test_no_output_holds_a_path_of_the_writing_machine(text_round, hub, cli, tmp_path):
    # Prepare
    needles = [str(text_round.parent), str(hub), str(Path.home())]
    assert cli("export", "-c", "b", "-r", 1, "-w", text_round, "--out", tmp_path / "e").exit_code == 0
    assert cli("export", "-c", "b", "-r", 1, "-w", text_round, "--out", tmp_path / "m", "--merge").exit_code == 0
    # Execute
    found = machine_paths_in(text_round, needles) + machine_paths_in(tmp_path, needles)
    # Assert
    assert found == []


def test_predict_streams_labels_and_probabilities_matching_eval(text_round, cli, tmp_path):
    # Prepare
    expected, _ = fedbip_logits(text_round, "a", 1)
    rows = [json.loads(line) for line in (text_round / "data/a/test.jsonl").read_text().splitlines()]
    path = tmp_path / "in.csv"
    path.write_text("text,extra\n" + "".join(f"{r['text']},x\n" for r in rows))
    # Execute
    result = cli("predict", "-c", "a", "-r", 1, "-w", text_round, "-i", path, "-o", tmp_path / "p.jsonl",
                 "--json", "--batch-size", 2)
    # Assert
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == len(preds) and [p["row"] for p in preds] == list(range(2, len(rows) + 2))
    probs = torch.tensor([[p["probabilities"][name] for name in LABELS3] for p in preds])
    assert torch.allclose(probs, expected.softmax(-1), atol=1e-5)
    assert [p["label"] for p in preds] == [LABELS3[i] for i in expected.argmax(-1).tolist()]
    assert sum(summary["label_counts"].values()) == len(rows)


def test_predict_reports_every_bad_row_and_writes_nothing(text_round, cli, tmp_path):
    # Prepare
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "goal match"}\n{"text": ""}\nnot json\n{"body": "x"}\n')
    # Execute
    result = cli("predict", "-c", "a", "-r", 1, "-w", text_round, "-i", path, "-o", tmp_path / "p.jsonl")
    # Assert
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if f"{path}:" in line]
    assert [line.split(f"{path}:")[1].split(":")[0] for line in lines] == ["2", "3", "4"]
    assert not (tmp_path / "p.jsonl").exists()


def test_predict_causal_lm_generations_equal_evals(lm_round, cli, tmp_path):
    # Prepare
    from fedbip_cli.steps.site import evaluate
    from fedbip_cli.workspace.layout import Workspace

    ws = Workspace.open(lm_round)
    samples = evaluate(ws, "copy", 1, log=False)["samples"]
    rows = [json.loads(line) for line in (lm_round / "data/copy/test.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": r["prompt"]} for r in rows])
    # Execute
    result = cli("predict", "-c", "copy", "-r", 1, "-w", lm_round, "-i", tmp_path / "in.jsonl")
    # Assert
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["generation"] for p in preds[:len(samples)]] == [s["prediction"] for s in samples]


def test_export_and_predict_refuse_unsafe_requests(text_round, cli, tmp_path):
    # Prepare
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    # Execute
    exported = cli("export", "-c", "a", "-r", 1, "-w", text_round, "--out", tmp_path / "taken")
    summary_only = cli("predict", "-c", "a", "-r", 1, "-w", text_round, "-i", text_round / "data/a/test.jsonl",
                       "--json")
    missing = cli("predict", "-c", "a", "-r", 1, "-w", text_round, "-i", tmp_path / "none.jsonl")
    # Assert
    assert exported.exit_code == 2 and "--force" in exported.output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    assert summary_only.exit_code == 2 and "--out" in summary_only.output
    assert missing.exit_code == 2 and "input file not found" in missing.output


def test_export_with_a_shared_runtime_leaves_it_usable(text_round, tmp_path):
    # Prepare
    from sentence_transformers import SentenceTransformer

    from fedbip_cli.steps.export import export
    from fedbip_cli.steps.site import SiteRuntime
    from fedbip_cli.workspace.layout import Workspace

    expected, _ = fedbip_logits(text_round, "a", 1)
    ws = Workspace.open(text_round)
    rt = SiteRuntime(ws)
    texts = [json.loads(line)["text"] for line in (text_round / "data/a/test.jsonl").read_text().splitlines()]
    # Execute
    export(ws, "a", 1, tmp_path / "m", merge=True, runtime=rt)
    merged = SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(texts, convert_to_tensor=True)
    after = rt.task.predict_logits(rt.model_for("a"), rt.split("a", "test"), rt.pad_id)
    # Assert
    assert torch.allclose(merged, expected, atol=1e-4)
    assert torch.allclose(after, expected, atol=1e-6)  # the runtime's model still holds the unmerged adapter
