"""SIGKILL `fedbip aggregate` and `fedbip finetune` at random moments, N times each, and check after every
kill that each output is absent or whole and agrees with the manifest; then that a rerun finishes.

    .venv/bin/python benchmarks/kill_test.py --kills 20

Prints one row per step: kills, kills that hit mid-write (outputs partly replaced), problems found.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fedbip_cli.core.files.adapter import check_adapter  # noqa: E402
from fedbip_cli.core.files.manifest import verify_round  # noqa: E402
from fedbip_cli.errors import UserError  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


def fedbip(*args: object) -> list[str]:
    return [sys.executable, "-m", "fedbip_cli", *map(str, args)]


def problems(ws: Path, folders: list[Path], round_dir: Path) -> list[str]:
    found = []
    for folder in folders:
        if folder.exists():
            try:
                check_adapter(folder)
            except UserError as e:
                found.append(str(e))
    if (round_dir / "manifest.json").exists():
        found += [p for ps in verify_round(round_dir).values() for p in ps if "missing" not in p]
    return found


def hammer(name: str, cmd: list[str], outputs: list[Path], round_dir: Path, kills: int, rng: random.Random) -> dict:
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--force"], env=ENV, check=True, capture_output=True)
    full = time.perf_counter() - t0
    found, mid = [], 0
    for _ in range(kills):
        before = {p: p.stat().st_mtime_ns for o in outputs for p in o.rglob("*") if p.is_file()}
        proc = subprocess.Popen(cmd + ["--force"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = {p: p.stat().st_mtime_ns for o in outputs for p in o.rglob("*") if p.is_file()}
        mid += int(before != after)
        found += problems(round_dir.parent.parent, outputs, round_dir)
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    found += problems(round_dir.parent.parent, outputs, round_dir)
    return {"step": name, "kills": kills, "seconds_per_run": round(full, 2), "kills_after_some_output": mid,
            "problems": len(found), "rerun_exit": rerun.returncode, "first_problem": found[0] if found else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    rng = random.Random(0)
    from fedbip_cli.testing.synthetic import Shape, make_round

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "coord"
        clients = make_round(ws, 8, Shape(layers=16, hidden=512, r=8, head=None), keep_trained=False).clients
        outs = [ws / "rounds/0001/start" / c for c in clients] + [ws / "rounds/0001/global"]
        rows = [hammer("aggregate", fedbip("aggregate", "-r", 0, "-w", ws), outs, ws / "rounds/0000", args.kills, rng)]

        from transformers import BertConfig, BertModel, BertTokenizerFast

        from conftest import (  # the tiny model's vocabulary and data
            TOPICS,
            client_rows,
            write_jsonl,
        )

        model = Path(tmp) / "tiny-bert"
        model.mkdir()
        words = set(" ".join(TOPICS.values()).split()) | set("the a of and to in on with for at by from".split())
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
        (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab_file=str(model / "vocab.txt")).save_pretrained(model)
        BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=64)).save_pretrained(model)
        site = Path(tmp) / "site"
        write_jsonl(site / "data/a/train.jsonl", client_rows(["sport", "money"], 200, 0))
        from fedbip_cli.steps.site import init_workspace

        init_workspace(site, model_path=str(model), labels=sorted(TOPICS),
                       clients={"a": {"train": "data/a/train.jsonl"}})
        rows.append(hammer("finetune", fedbip("finetune", "-c", "a", "-r", 0, "-w", site),
                           [site / "rounds/0000/trained/a", site / "initial"], site / "rounds/0000", args.kills, rng))
    print("| step | kills | s per run | kills after some output | problems | rerun exit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['kills']} | {r['seconds_per_run']} | {r['kills_after_some_output']} | "
              f"{r['problems']} | {r['rerun_exit']} |" + (f" {r['first_problem']}" if r["problems"] else ""))


if __name__ == "__main__":
    main()
