"""Run the multi-task federation: every round, each client fine-tunes its LoRA adapter on its own task,
writes its task vector; the coordinator compares them and aggregates; each client is evaluated on its
held-out examples (response loss, perplexity, exact match and token F1 of greedy generations).

    python examples/multitask/run.py WORKDIR [--rounds 3] [--strategy fedbip]

The same functions as the commands (`fedbip finetune / taskvec / similarity / aggregate / eval`), in
one process so the model loads once; the files are the same as a command-by-command run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fedbip_cli as fb
from fedbip_cli.steps.site import SiteRuntime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategy", default=None, help="fedbip | fedbip-layer | fedavg | fedamp | local")
    args = ap.parse_args()

    ws = fb.Workspace.open(args.workdir)
    rt = SiteRuntime(ws)
    clients = list(ws.config.clients)
    for t in range(args.rounds):
        for c in clients:
            info = fb.finetune(ws, c, t, runtime=rt)
            fb.taskvec(ws, c, t)
            print(f"round {t} {c:>9}: {info['steps']} steps, loss {info['final_loss']:.3f}")
        sim = fb.similarity(ws, t)
        agg = fb.aggregate(ws, t, strategy=args.strategy, force=True)
        if t == 0:
            print("task-vector cosine, round 0:")
            for c, row in zip(sim.clients, sim.matrix):
                print(f"  {c:>9} " + " ".join(f"{v:5.2f}" for v in row))
        print(f"round {t}: {agg.strategy}, self weights "
              + ", ".join(f"{c} {agg.weights[i, i]:.2f}" for i, c in enumerate(agg.clients)))
        scores = [fb.evaluate(ws, c, t + 1, runtime=rt) for c in clients]
        for c, m in zip(clients, scores):
            print(f"  {c:>9}: exact match {m['exact_match']:.2f}  token F1 {m['token_f1']:.2f}  "
                  f"loss {m['loss']:.3f}  e.g. {m['samples'][0]['prediction']!r} for {m['samples'][0]['reference']!r}")
        mean = {k: sum(m[k] for m in scores) / len(scores) for k in ("exact_match", "token_f1", "loss")}
        print(f"round {t + 1} mean: exact match {mean['exact_match']:.3f}  token F1 {mean['token_f1']:.3f}  "
              f"loss {mean['loss']:.3f}")


if __name__ == "__main__":
    main()
