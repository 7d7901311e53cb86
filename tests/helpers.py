"""Test data helpers shared by test files: topic texts, JSONL rows of labelled examples."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "sport": "match goal team coach league score player win season cup",
    "money": "bank market stock price profit shares growth trade rate fund",
    "tech": "phone software chip computer internet data robot code screen app",
}
FILLER = "the a of and to in on with for at by from"


def make_texts(label: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words, filler = TOPICS[label].split(), FILLER.split()
    return [" ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(filler)
                     for _ in range(rng.randint(4, 14))) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def client_rows(labels: list[str], n: int, seed: int) -> list[dict]:
    rows = []
    for i, label in enumerate(labels):
        rows += [{"text": t, "label": label} for t in make_texts(label, n, seed * 100 + i)]
    random.Random(seed).shuffle(rows)
    return rows


# causal-lm workspaces (tests/client, tests/sim, tests/flower)
COLOURS = "red green blue black white one two three four five cat dog bird fish cow".split()


def lm_rows(task: str, n: int, seed: int) -> list[dict]:
    """Instruction tasks, one per client as in the paper's multi-task setting; `reverse` is Alpaca-style."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(COLOURS) for _ in range(rng.randint(2, 4))]
        if task == "copy":
            rows.append({"prompt": "copy " + " ".join(words), "response": " ".join(words)})
        elif task == "reverse":
            rows.append({"instruction": "reverse", "input": " ".join(words), "output": " ".join(words[::-1])})
        else:
            rows.append({"prompt": "first " + " ".join(words), "response": words[0]})
    return rows


def build_lm_workspace(root: Path, model: Path, clients: dict[str, str], **replace: str) -> Path:
    from fedbip_cli.steps.site import init_workspace

    spec = {}
    for k, (name, task) in enumerate(clients.items()):
        write_jsonl(root / "data" / name / "train.jsonl", lm_rows(task, 12, k))
        write_jsonl(root / "data" / name / "test.jsonl", lm_rows(task, 4, 50 + k))
        spec[name] = {"train": f"data/{name}/train.jsonl", "test": f"data/{name}/test.jsonl"}
    init_workspace(root, model_path=str(model), clients=spec)
    text = (root / "fedbip.yaml").read_text()
    for old, new in {"type: text-classification": "type: causal-lm", "max_new_tokens: 32": "max_new_tokens: 6",
                     "batch_size: 16": "batch_size: 6", "max_length: 128": "max_length: 48",
                     "learning_rate: 5.0e-4": "learning_rate: 1.0e-2", **replace}.items():
        text = text.replace(old, new)
    (root / "fedbip.yaml").write_text(text)
    return root
