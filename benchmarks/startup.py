"""Start-up time of the `fedbip` command: `fedbip --help` and every subcommand's `--help`, as whole processes.

Each command runs N times, interleaved with `python -c pass` (the interpreter's own start-up, run side by
side so machine load affects both alike); the table gives the median wall time of each and the budget
check (issue 16: <= 0.25 s on the 2-core machine).

    python benchmarks/startup.py [--runs 7] [--budget 0.25]
"""

from __future__ import annotations

import argparse
import os
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


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="whole-process runs per command (median reported)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds a --help may take")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fedbip = fedbip_command()
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "fedbip --help": [*fedbip, "--help"]}
    cases |= {f"fedbip {c} --help": [*fedbip, c, "--help"] for c in subcommands()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for cmd in cases.values():  # warm the file cache once
        wall(cmd)
    for _ in range(a.runs):
        for name, cmd in cases.items():  # interleaved: load changes hit every command alike
            times[name].append(wall(cmd))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{a.runs} runs each, interleaved; load average {' '.join(load)}; {sys.executable}")
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<32} {'median s':>9} {'- python s':>11}  budget {a.budget} s")
    worst = 0.0
    for name, ts in times.items():
        med = statistics.median(ts)
        ok = "" if name == "python -c pass" else ("ok" if med <= a.budget else "OVER")
        worst = max(worst, med) if name != "python -c pass" else worst
        print(f"{name:<32} {med:>9.3f} {med - base:>11.3f}  {ok}")
    print(f"slowest --help: {worst:.3f} s ({'within' if worst <= a.budget else 'over'} the {a.budget} s budget)")


if __name__ == "__main__":
    main()
