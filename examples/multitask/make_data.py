"""Eight instruction tasks, one per client (the paper's 8-task Flan setting in miniature), and a
causal-lm workspace for them.

    python examples/multitask/make_data.py WORKDIR [--model MODEL_FOLDER]

Writes WORKDIR/data/<task>/{train,test}.jsonl and WORKDIR/fedbip.yaml. Half the tasks use
prompt/response rows, half Alpaca's instruction/input/output. Without --model the workspace points at
WORKDIR/model, which make_model.py fills with a tiny random Llama.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = "red green blue black white cat dog bird fish cow sun moon tree rock sea".split()
FRENCH = dict(zip(WORDS,
                  "rouge vert bleu noir blanc chat chien oiseau poisson vache soleil lune arbre roche mer".split()))
NUMBERS = "zero one two three four five six".split()


def example(task: str, words: list[str]) -> dict:
    """One row of `task` on `words`."""
    text = " ".join(words)
    answers = {
        "copy": text, "reverse": " ".join(words[::-1]), "first": words[0], "last": words[-1],
        "count": NUMBERS[len(words)], "sort": " ".join(sorted(words)),
        "translate": " ".join(FRENCH[w] for w in words), "double": " ".join(w + " " + w for w in words),
    }
    if task in ("copy", "first", "count", "sort"):
        return {"prompt": f"{task} : {text}", "response": answers[task]}
    return {"instruction": task, "input": text, "output": answers[task]}


TASKS = ["copy", "reverse", "first", "last", "count", "sort", "translate", "double"]


def vocabulary() -> list[str]:
    """Every word the data and the prompt template use (the tiny tokenizer's vocabulary)."""
    template = "### Instruction: Input: Response: :".split()
    return sorted(set(WORDS) | set(FRENCH.values()) | set(NUMBERS) | set(TASKS) | set(template))


def rows(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [example(task, [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]) for _ in range(n)]


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--model", type=Path, help="causal LM folder (default: WORKDIR/model, see make_model.py)")
    ap.add_argument("--train", type=int, default=32, help="training examples per client")
    ap.add_argument("--test", type=int, default=16, help="test examples per client")
    args = ap.parse_args()

    from fedbip_cli.steps.site import init_workspace

    root = args.workdir
    clients = {}
    for k, task in enumerate(TASKS):
        write_jsonl(root / "data" / task / "train.jsonl", rows(task, args.train, k))
        write_jsonl(root / "data" / task / "test.jsonl", rows(task, args.test, 100 + k))
        clients[task] = {"train": f"data/{task}/train.jsonl", "test": f"data/{task}/test.jsonl"}
    clients["translate"]["lora_r"] = clients["double"]["lora_r"] = 8  # two sites chose a larger rank
    model = (args.model or root / "model").resolve()
    init_workspace(root, model_path=str(model), clients=clients, force=True)
    text = (root / "fedbip.yaml").read_text()
    for old, new in {"type: text-classification": "type: causal-lm", "max_length: 128": "max_length: 48",
                     "max_new_tokens: 32": "max_new_tokens: 12", "r: 8  ": "r: 4  ", "epochs: 1.0": "epochs: 3.0",
                     "batch_size: 16": "batch_size: 8", "learning_rate: 5.0e-4": "learning_rate: 1.0e-2"}.items():
        text = text.replace(old, new)
    (root / "fedbip.yaml").write_text(text)
    print(f"wrote {root / 'fedbip.yaml'}: {len(TASKS)} clients, one task each ({', '.join(TASKS)})")


if __name__ == "__main__":
    main()
