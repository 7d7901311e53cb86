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
