"""Write three sites' private data (BBC News slices) and one shared fedbip.yaml into each site folder.

site_a and site_b both hold business and tech news; site_c holds sports, entertainment and politics.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from fedbip_cli.datasets.bbc import load_bbc
from fedbip_cli.steps.site import init_workspace

SITES = {"site_a": ["business", "tech"], "site_b": ["business", "tech"],
         "site_c": ["sports", "entertainment", "politics"]}


def main(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    texts, labels, topics = load_bbc(max_chars=300)
    rng = random.Random(7)
    pool = {t: [i for i, lab in enumerate(labels) if lab == t] for t in topics}
    for t in pool:
        rng.shuffle(pool[t])
    clients = {s: {"train": f"data/{s}/train.jsonl", "test": f"data/{s}/test.jsonl"} for s in SITES}
    for folder in [*SITES, "coordinator"]:
        init_workspace(root / folder, labels=topics, clients=clients, force=True)
    for site, tops in SITES.items():
        picked = [pool[tops[k % len(tops)]].pop() for k in range(n_train + n_test)]
        rows = [json.dumps({"text": texts[i], "label": labels[i]}) + "\n" for i in picked]
        data = root / site / "data" / site
        data.mkdir(parents=True, exist_ok=True)
        (data / "train.jsonl").write_text("".join(rows[:n_train]))
        (data / "test.jsonl").write_text("".join(rows[n_train:]))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
