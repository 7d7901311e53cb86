"""Benchmark of the coordinator: `fedbip similarity` + `fedbip aggregate` on LLaMA-7B-shaped LoRA adapters.

    PYTHONPATH=. python benchmarks/aggregate.py --clients 64 --delta-clients 16 --out /tmp/fedbip-bench

Synthetic PEFT adapters shaped like LLaMA-7B LoRA (r=16 on q_proj and v_proj of 32 layers, hidden
4096: 33.6 MB each in fp32) are written for N clients sharing one round-0 start adapter, with their
task vectors (`fedbip_cli.synthetic`). In one run it measures, with warm page cache (every file was
just written):

- the commands: wall time and peak RSS of `fedbip similarity` and `fedbip aggregate` run as
  processes (start-up, imports, hashing for the manifest, fsync of every output included);
- the floor: every input read and every output written once by a plain copy (shutil.copyfile), plus
  the two float32 products a similarity (X Xᵀ) and a weighted sum (W X) need, in numpy;
- a straightforward reference: every task vector flattened into one in-memory matrix, cosines and
  weighted sums in numpy, outputs written with safetensors.numpy (its own process, for its RSS);
- delta space at fewer clients, against factor space at the same count.

Targets (issue 4): factor N=64 similarity+aggregate <= 2x the floor with peak RSS < 0.5 GB; delta N=16
<= 10x factor N=16. The data is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedbip_cli.synthetic import Shape, make_round  # noqa: E402


def measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd`; return (wall seconds, peak RSS in MB) of that process alone (os.wait4's rusage)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}; see {log}")
    return wall, usage.ru_maxrss / 1024


def fedbip(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedbip_cli", *args]


def commands(ws: Path, space: str, log: Path) -> dict:
    sim = measured(fedbip("similarity", "-r", "0", "-w", str(ws), "--space", space, "--json"), log)
    agg = measured(fedbip("aggregate", "-r", "0", "-w", str(ws), "--space", space, "--json"), log)
    return {"similarity_s": sim[0], "similarity_rss_mb": sim[1], "aggregate_s": agg[0], "aggregate_rss_mb": agg[1],
            "total_s": sim[0] + agg[0], "peak_rss_mb": max(sim[1], agg[1])}


def floor(ws: Path, n: int, scratch: Path) -> dict:
    """Plain copies (each input read once, each output written once) + X Xᵀ and W X in float32."""
    scratch.mkdir(parents=True, exist_ok=True)
    inputs = sorted((ws / "rounds/0000/deltas").glob("*.safetensors"))
    start = ws / "initial/adapter_model.safetensors"
    t0 = time.perf_counter()
    for k, f in enumerate(inputs):
        shutil.copyfile(f, scratch / f"out{k}.bin")
    shutil.copyfile(start, scratch / "global.bin")
    copy = time.perf_counter() - t0
    params = Shape.llama7b().nbytes_fp32 // 4
    chunk = 4096 * 16  # one tensor
    x = np.random.default_rng(0).standard_normal((n, chunk), dtype=np.float32)
    w = np.random.default_rng(1).random((n + 1, n)).astype(np.float32)
    out = np.empty((n + 1, chunk), np.float32)
    reps = params // chunk
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ x.T
    gram = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        np.matmul(w, x, out=out)
    mix = time.perf_counter() - t0
    shutil.rmtree(scratch)
    return {"copy_s": copy, "gram_s": gram, "mix_s": mix, "total_s": copy + gram + mix,
            "input_gb": sum(f.stat().st_size for f in inputs + [start]) / 1e9}


def reference(ws: Path, out_dir: Path) -> None:
    """The straightforward way: all task vectors in one matrix, cosines and sums in numpy."""
    from safetensors.numpy import load_file, save_file

    files = sorted((ws / "rounds/0000/deltas").glob("*.safetensors"))
    start = load_file(str(ws / "initial/adapter_model.safetensors"))
    names = sorted(start)
    x = np.stack([np.concatenate([t[n].ravel() for n in names]) for t in map(load_file, map(str, files))])
    s = np.concatenate([start[n].ravel() for n in names])
    norms = np.linalg.norm(x, axis=1)
    cos = (x @ x.T) / norms[:, None] / norms[None, :]
    w = np.clip(cos, 0, None)
    w /= w.sum(axis=1, keepdims=True)
    mixed = s[None, :] + w @ x
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, row in enumerate(mixed):
        tensors, pos = {}, 0
        for n in names:
            tensors[n] = row[pos:pos + start[n].size].reshape(start[n].shape)
            pos += start[n].size
        save_file(tensors, str(out_dir / f"{files[k].stem}.safetensors"))


def build(root: Path, n: int, space: str) -> float:
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    make_round(root, n, Shape.llama7b(), groups=4, space=space, keep_trained=False, seed=n)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--delta-clients", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedbip-bench"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reference-only", nargs=2, type=Path, metavar=("WS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_only:
        reference(*args.reference_only)
        return
    adapter_mb = Shape.llama7b().nbytes_fp32 / 1e6
    need_gb = adapter_mb * (4 * args.clients + 6 * args.delta_clients) / 1e3 + 1
    free_gb = shutil.disk_usage(args.out.parent if not args.out.exists() else args.out).free / 1e9
    print(f"adapter {adapter_mb:.1f} MB fp32; needs ~{need_gb:.1f} GB of disk, {free_gb:.0f} GB free")
    if free_gb < need_gb:
        raise SystemExit("not enough disk")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    res: dict = {"clients": args.clients, "delta_clients": args.delta_clients, "adapter_mb": adapter_mb}
    try:
        big = args.out / f"factor{args.clients}"
        print(f"building factor-space round, N={args.clients} ...", flush=True)
        res["build_s"] = build(big, args.clients, "factor")
        res["factor"] = commands(big, "factor", log)
        print("factor:", json.dumps(res["factor"]), flush=True)
        res["floor"] = floor(big, args.clients, args.out / "floor")
        print("floor:", json.dumps(res["floor"]), flush=True)
        if not args.skip_reference:
            t = measured([sys.executable, __file__, "--reference-only", str(big), str(args.out / "ref")], log)
            res["reference"] = {"total_s": t[0], "peak_rss_mb": t[1]}
            shutil.rmtree(args.out / "ref", ignore_errors=True)
            print("reference:", json.dumps(res["reference"]), flush=True)
        shutil.rmtree(big)
        small_f, small_d = args.out / f"factor{args.delta_clients}", args.out / f"delta{args.delta_clients}"
        print(f"building N={args.delta_clients} rounds (factor and delta storage) ...", flush=True)
        build(small_f, args.delta_clients, "factor")
        build(small_d, args.delta_clients, "delta")
        res["factor_small"] = commands(small_f, "factor", log)
        res["delta_small"] = commands(small_d, "delta", log)
        weights = json.loads((small_d / "rounds/0000/weights.json").read_text())
        res["delta_truncation_max"] = max(v["relative"] for v in weights["truncation"].values())
        print("factor small:", json.dumps(res["factor_small"]), "\ndelta small:", json.dumps(res["delta_small"]))
    finally:
        if not args.keep:
            for p in args.out.glob("*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
    n, m = args.clients, args.delta_clients
    f, fl = res["factor"], res["floor"]
    res["ratios"] = {
        f"factor N={n} / floor": f["total_s"] / fl["total_s"],
        f"factor N={n} / reference": f["total_s"] / res["reference"]["total_s"] if "reference" in res else None,
        f"delta N={m} / factor N={m}": res["delta_small"]["total_s"] / res["factor_small"]["total_s"],
    }
    dense_gb = m * len(Shape.llama7b().modules()) * 4096 * 4096 * 4 / 1e9
    res["delta_dense_materialization_gb"] = dense_gb
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    print("\n| measure | seconds | peak RSS (MB) |\n|---|---|---|")
    print(f"| factor N={n}: similarity | {f['similarity_s']:.2f} | {f['similarity_rss_mb']:.0f} |")
    print(f"| factor N={n}: aggregate | {f['aggregate_s']:.2f} | {f['aggregate_rss_mb']:.0f} |")
    print(f"| factor N={n}: both | {f['total_s']:.2f} | {f['peak_rss_mb']:.0f} |")
    print(f"| floor N={n} (copy {fl['copy_s']:.2f} + XXᵀ {fl['gram_s']:.2f} + WX {fl['mix_s']:.2f}) | {fl['total_s']:.2f} | |")
    if "reference" in res:
        print(f"| reference N={n} (all in memory) | {res['reference']['total_s']:.2f} | {res['reference']['peak_rss_mb']:.0f} |")
    for key, label in (("factor_small", f"factor N={m}"), ("delta_small", f"delta N={m}")):
        r = res[key]
        print(f"| {label}: similarity + aggregate | {r['similarity_s']:.2f} + {r['aggregate_s']:.2f} = "
              f"{r['total_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print()
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}x" if v is not None else f"{k}: n/a")
    print(f"delta N={m}: largest relative truncation error {res['delta_truncation_max']:.3f}; dense ΔW of all "
          f"clients would need {dense_gb:.1f} GB")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
