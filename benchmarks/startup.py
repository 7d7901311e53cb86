"""Start-up time of the `fedbip` command: `fedbip --help` and every subcommand's `--help`, as whole processes.

Each command runs N times, interleaved with `python -c pass` (the interpreter's own start-up, run side by
side so machine load affects both alike); the table gives the median wall time of each, its excess over
`python -c pass`, the median CPU time (user + system: what the process itself needs, much less
affected by other jobs than wall time) and the budget check (issue 16: <= 0.25 s on the 2-core
machine; on a loaded machine read the CPU column against it).

    python benchmarks/startup.py [--runs 7] [--budget 0.25]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def fedbip_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else `python -m fedbip_cli`."""
    script = Path(sys.executable).parent / "fedbip"
    if script.is_file():
        return [str(script)]
    found = shutil.which("fedbip")
    return [found] if found else [sys.executable, "-m", "fedbip_cli"]


def subcommands() -> list[str]:
    import typer

    from fedbip_cli.cli.app import app

    return list(typer.main.get_command(app).commands)


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one whole-process run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="whole-process runs per command (median reported)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds a --help may take")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fedbip = fedbip_command()
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "fedbip --help": [*fedbip, "--help"]}
    cases |= {f"fedbip {c} --help": [*fedbip, c, "--help"] for c in subcommands()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for cmd in cases.values():  # warm the file cache once
        run_once(cmd)
    for _ in range(a.runs):
        for name, cmd in cases.items():  # interleaved: load changes hit every command alike
            times[name].append(run_once(cmd))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{a.runs} runs each, interleaved; load average {' '.join(load)}; {sys.executable}")
    base = statistics.median(w for w, _ in times["python -c pass"])
    print(f"{'command':<32} {'wall s':>8} {'- python':>9} {'CPU s':>7}  budget {a.budget} s (wall / CPU)")
    worst_wall = worst_cpu = 0.0
    for name, ts in times.items():
        wall = statistics.median(w for w, _ in ts)
        cpu = statistics.median(c for _, c in ts)
        ok = "" if name == "python -c pass" else \
            f"{'ok' if wall <= a.budget else 'over'} / {'ok' if cpu <= a.budget else 'over'}"
        if name != "python -c pass":
            worst_wall, worst_cpu = max(worst_wall, wall), max(worst_cpu, cpu)
        print(f"{name:<32} {wall:>8.3f} {wall - base:>9.3f} {cpu:>7.3f}  {ok}")
    print(f"slowest --help: {worst_wall:.3f} s wall, {worst_cpu:.3f} s CPU (budget {a.budget} s)")


if __name__ == "__main__":
    main()
