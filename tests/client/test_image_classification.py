"""task.type image-classification on a tiny random ViT: class folders and .npz data, LoRA on the
attention projections plus the head, the file pipeline and PEFT loadability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedbip_cli.errors import UserError


def images(label: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """10x10 RGB images whose bright half says the class."""
    x = rng.integers(0, 60, (n, 10, 10, 3)).astype(np.uint8)
    half = {"top": np.s_[:, :5], "bottom": np.s_[:, 5:], "left": np.s_[:, :, :5]}[label]
    x[half] += 150
    return x


def write_folder(root: Path, labels: list[str], n: int, rng: np.random.Generator) -> None:
    Image = pytest.importorskip("PIL.Image")  # the [vision] extra

    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images(label, n, rng)):
            Image.fromarray(im).save(root / label / f"{i}.png")


def write_npz(path: Path, labels: list[str], n: int, rng: np.random.Generator) -> None:
    """Grey float images in [0, 1], channels first: the loader must bring them to the model's RGB."""
    x = np.concatenate([images(lab, n, rng) for lab in labels]).mean(-1, keepdims=True).transpose(0, 3, 1, 2) / 255.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=x.astype(np.float32), labels=np.array([lab for lab in labels for _ in range(n)]))


def run(*args: object):
    from fedbip_cli.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def image_round(tiny_vit, tmp_path_factory):
    """Client a: class folders; b: class folders; c: .npz. One round of the real commands."""
    from fedbip_cli.steps.site import init_workspace

    ws = tmp_path_factory.mktemp("img") / "ws"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_folder(ws / "data" / name / "train", ["top", "bottom"], 6, rng)
        write_folder(ws / "data" / name / "test", ["top", "bottom"], 2, rng)
    write_npz(ws / "data/c/train.npz", ["top", "left"], 6, rng)
    write_npz(ws / "data/c/test.npz", ["top", "left"], 2, rng)
    clients = {n: {"train": f"data/{n}/train", "test": f"data/{n}/test"} for n in ("a", "b")}
    clients["c"] = {"train": "data/c/train.npz", "test": "data/c/test.npz"}
    init_workspace(ws, model_path=str(tiny_vit), clients=clients)
    text = (ws / "fedbip.yaml").read_text().replace("type: text-classification", "type: image-classification")
    (ws / "fedbip.yaml").write_text(text.replace("batch_size: 16", "batch_size: 4").replace("r: 8  ", "r: 4  "))
    out = {"labels": run("labels", "-w", ws)}
    for c in ("a", "b", "c"):
        run("finetune", "-c", c, "-r", 0, "-w", ws)
        run("taskvec", "-c", c, "-r", 0, "-w", ws)
    out["similarity"] = run("similarity", "-r", 0, "-w", ws)
    out["aggregate"] = run("aggregate", "-r", 0, "-w", ws)
    out["eval"] = {c: run("eval", "-c", c, "-r", 1, "-w", ws) for c in ("a", "c")}
    return ws, out


def test_pipeline_labels_metrics_and_lora_targets(image_round):
    ws, out = image_round
    assert out["labels"] == ["bottom", "left", "top"]
    s = np.array(out["similarity"]["similarity"])
    assert s.shape == (3, 3) and np.allclose(np.diag(s), 1) and np.allclose(s, s.T)
    assert np.allclose(np.array(out["aggregate"]["weights"]).sum(1), 1)
    for metrics in out["eval"].values():
        assert {"accuracy", "macro_f1", "loss"} <= set(metrics) and metrics["examples"] == 4
    config = json.loads((ws / "initial/adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["modules_to_save"] == ["classifier"]


def test_every_adapter_loads_with_peft_on_the_same_construction(image_round):
    from peft import PeftModel
    from safetensors.torch import load_file

    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.workspace.layout import Workspace

    ws, _ = image_round
    task = make_task(Workspace.open(ws).config)
    folders = [ws / "initial", ws / "rounds/0001/global"] + [ws / f"rounds/{d}/{c}"
                                                            for d in ("0000/trained", "0001/start")
                                                            for c in ("a", "b", "c")]
    for folder in folders:
        model = PeftModel.from_pretrained(task.build_base_model(3), folder)
        live = {k.replace(".default", "").replace(".modules_to_save", ""): v for k, v in model.named_parameters()}
        for name, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
            assert torch.equal(live[name].detach(), tensor), (folder, name)


def test_head_is_seeded_the_same_at_every_site(tiny_vit):
    from fedbip_cli.client.tasks import make_task
    from fedbip_cli.workspace.config import Config, ModelConfig, TaskConfig

    task = make_task(Config(model=ModelConfig(path=str(tiny_vit)), task=TaskConfig(type="image-classification")))
    one, two = task.build_base_model(5, head_seed=7), task.build_base_model(5, head_seed=7)
    assert one.classifier.out_features == 5 and torch.equal(one.classifier.weight, two.classifier.weight)


@pytest.mark.parametrize("shape, dtype, scale", [((2, 6, 5), np.float64, 1.0), ((2, 3, 6, 5), np.float32, 1.0),
                                                 ((2, 6, 5, 3), np.uint8, 255), ((2, 6, 5, 1), np.int64, 255)])
def test_npz_image_layouts_become_hwc_uint8(shape, dtype, scale):
    from fedbip_cli.client.tasks.image.data import to_uint8_hwc, with_channels

    x = (np.random.default_rng(0).random(shape) * scale).astype(dtype)
    out = to_uint8_hwc(x, "x.npz")
    assert out.dtype == np.uint8 and out.shape[:3] == (2, 6, 5) and out.shape[3] in (1, 3)
    assert with_channels(out[0], 3).shape == (6, 5, 3) and with_channels(out[0], 1).shape == (6, 5, 1)


def test_plain_processor_for_models_without_one():
    from fedbip_cli.client.tasks.image.task import PlainProcessor

    pixels = PlainProcessor(8)([np.full((5, 7, 3), 255, np.uint8), np.zeros((9, 9, 3), np.uint8)])["pixel_values"]
    assert pixels.shape == (2, 3, 8, 8)
    assert torch.allclose(pixels[0], torch.ones(1)) and torch.allclose(pixels[1], -torch.ones(1))


def test_bad_image_data_is_one_line(tmp_path):
    from fedbip_cli.client.tasks.image.data import read_images
    from fedbip_cli.workspace.config import TaskConfig

    np.savez(tmp_path / "x.npz", images=np.zeros((3, 4, 4)), labels=np.array([0, 1]))
    with pytest.raises(UserError, match="x.npz: 'labels' must be one label per image"):
        read_images(tmp_path / "x.npz", TaskConfig())
    np.savez(tmp_path / "y.npz", pixels=np.zeros((3, 4, 4)))
    with pytest.raises(UserError, match="y.npz: .npz holds no array 'images'"):
        read_images(tmp_path / "y.npz", TaskConfig())
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        read_images(tmp_path / "empty", TaskConfig())
    with pytest.raises(UserError, match="image data not found"):
        read_images(tmp_path / "nothing", TaskConfig())
