"""Fixtures: a tiny random BERT with its tokenizer, and small federations built on it.

Mechanics are tested on this model (seconds); a few tests marked `real` use the packaged MiniLM.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import FILLER, TOPICS, client_rows, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


TIERS = ("core", "model", "real", "slow")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items) -> None:
    """Tier markers from the folder: tests/core/ is the numpy-only tier (`core`), every other folder runs
    tiny models (`model`) unless marked `real` (the packaged MiniLM); `slow` is added by hand."""
    for item in items:
        if item.get_closest_marker("real"):
            continue
        rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
        item.add_marker(pytest.mark.core if rel.parts[0] == "core" else pytest.mark.model)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models gain nothing from threads, and on a shared machine a second thread waiting for a
    busy core makes every small op slow. Only where torch is already loaded: the core tier never loads it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT and a word-level tokenizer over the fixture vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        set(" ".join(TOPICS.values()).split()) | set(FILLER.split()))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def build_workspace(tiny_bert):
    """Build a workspace on the tiny BERT in any folder (usable from module-scoped fixtures):
    `build_workspace(root, {"a": ["sport", "money"], ...})`."""

    def build(root: Path, clients: dict[str, list[str]], n_train: int = 12, n_test: int = 6, **overrides) -> Path:
        from fedbip_cli.steps.site import init_workspace

        spec = {}
        for k, (name, labels) in enumerate(clients.items()):
            write_jsonl(root / "data" / name / "train.jsonl", client_rows(labels, n_train, k))
            write_jsonl(root / "data" / name / "test.jsonl", client_rows(labels, n_test, 50 + k))
            spec[name] = {"train": f"data/{name}/train.jsonl", "test": f"data/{name}/test.jsonl"}
        init_workspace(root, model_path=str(tiny_bert), labels=sorted(TOPICS), clients=spec,
                       settings={"training.batch_size": 8, "model.max_length": 32, "lora.r": 4,
                                 "training.learning_rate": 5.0e-3})
        text = (root / "fedbip.yaml").read_text()
        for key, value in overrides.items():
            text = text.replace(key, value)
        (root / "fedbip.yaml").write_text(text)
        return root

    return build


@pytest.fixture
def make_workspace(tmp_path, build_workspace):
    """Build a workspace on the tiny BERT: `make_workspace({"a": ["sport", "money"], ...})`."""

    def build(clients: dict[str, list[str]], n_train: int = 12, n_test: int = 6, folder: Path | None = None,
              **overrides) -> Path:
        return build_workspace(folder or tmp_path / "ws", clients, n_train, n_test, **overrides)

    return build


@pytest.fixture
def cli():
    """Run the typer app in-process: cli("aggregate", "-r", "0", "-w", ws) -> Result."""
    from typer.testing import CliRunner

    from fedbip_cli.cli.app import app

    runner = CliRunner()

    def run(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return run


# Task types beyond text classification (issue 7): a tiny random Llama and a tiny random ViT.
LM_WORDS = ("red green blue black white one two three four five cat dog bird fish cow "
            "copy reverse first last count say ### Instruction: Input: Response:").split()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random Llama with a word-level tokenizer over LM_WORDS."""
    from fedbip_cli.testing.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), LM_WORDS)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random ViT for 8x8 RGB images, with its ViTImageProcessor."""
    from fedbip_cli.testing.tiny_models import build_tiny_vit

    return build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"), image_size=8)
