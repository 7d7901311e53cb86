"""Every file and folder fedbip writes honours the umask (issue 21): a whole round on a tiny BERT, at the
sites and the coordinator, with export, pack/unpack, predict and simulate, under umask 022 and 027."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def walk_round(cli, ws: Path, out: Path) -> None:
    """Everything a federation writes in one round, through the real commands."""
    def ok(*args):
        r = cli(*args)
        assert r.exit_code == 0, (args, r.output)

    ok("labels", "-w", ws)
    ok("initial", "-w", ws)
    for c in ("a", "b"):
        ok("finetune", "-c", c, "-r", 0, "-w", ws)
        ok("taskvec", "-c", c, "-r", 0, "-w", ws)
    ok("pack", "-c", "a", "-r", 0, "--kind", "taskvec", "-w", ws)
    ok("similarity", "-r", 0, "-w", ws)
    ok("aggregate", "-r", 0, "-w", ws)
    ok("pack", "-c", "b", "-r", 0, "--kind", "adapter", "-w", ws, "-o", out / "b-adapter.fedbip.tar")
    ok("unpack", out / "b-adapter.fedbip.tar", "-w", ws)
    ok("eval", "-c", "a", "-r", 1, "-w", ws)
    ok("predict", "-c", "a", "-r", 1, "-i", ws / "data/a/test.jsonl", "-o", out / "pred.jsonl", "-w", ws)
    ok("export", "-c", "a", "-r", 1, "--out", out / "export", "-w", ws)
    ok("export", "-c", "b", "-r", 1, "--merge", "--out", out / "merged", "-w", ws)
    ok("simulate", "-w", ws, "-n", "1", "--strategies", "fedbip,local")


def wrong_modes(root: Path, umask: int) -> list[str]:
    """Every path under root whose permission bits are not 0666 / 0777 less the umask."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            want = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~umask
            if stat.S_IMODE(st.st_mode) & 0o777 != want:
                bad.append(f"{p.relative_to(root)}: {stat.S_IMODE(st.st_mode):04o}, want {want:04o}")
    return bad


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_honours_the_umask(cli, make_workspace, tmp_path, umask):
    old = os.umask(umask)
    try:
        ws = make_workspace({"a": ["sport", "money"], "b": ["sport", "tech"]}, n_train=6, n_test=3)
        (ws / "labels.json").unlink(missing_ok=True)
        out = tmp_path / "out"
        out.mkdir()
        walk_round(cli, ws, out)
    finally:
        os.umask(old)
    bad = wrong_modes(ws, umask) + wrong_modes(out, umask)
    assert bad == [], "\n".join(bad)
