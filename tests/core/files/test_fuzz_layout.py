"""Fuzzing the workspace layout (issue 22): every path the layout names, at the coordinator, replaced by
something it should not be (random bytes, bytes that are not UTF-8, a folder, a FIFO, a symlink to a file
or a folder outside the workspace), then one of the coordinator's commands run on it.

The rule: the command ends with exit 0, or with one line and exit 2 (75: not ready, 3: a conflict) and
not a byte changed inside the workspace; a folder, FIFO or link out where the command writes is always
exit 2; a file outside the workspace is never changed, and nothing is created outside it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedbip_cli.cli.app import app
from fedbip_cli.core.files.digest_cache import CACHE
from fedbip_cli.core.files.gram_cache import FILE as GRAMS
from fedbip_cli.testing.synthetic import Shape, make_round
from fuzzing import fuzz

BASE = Path(tempfile.mkdtemp(prefix="fedbip-fuzz-layout-"))
PRISTINE, ROOT, OUTSIDE = BASE / "pristine", BASE / "ws", BASE / "outside"
RUNNER = CliRunner()


def _invoke(*args: object):
    return RUNNER.invoke(app, [str(a) for a in args])


def _build() -> None:
    make_round(PRISTINE, 3, Shape(layers=1, hidden=8, r=2, head=None))
    for args in (("similarity", "-r", 0), ("aggregate", "-r", 0), ("pack", "-c", "c000", "-r", 0, "--kind", "taskvec")):
        r = _invoke(*args, "-w", PRISTINE)
        assert r.exit_code == 0, r.output


_build()

PACK = Path("outbox/c000-r0000-taskvec.fedbip.tar")
R0, R1 = Path("rounds/0000"), Path("rounds/0001")
# every path of the layout that a coordinator holds, as a file or a folder
FILES = [Path("fedbip.yaml"), Path("labels.json"), Path("metrics.jsonl"), Path("initial/adapter_config.json"),
         Path("initial/adapter_model.safetensors"), *(R0 / "deltas" / f"c00{k}.safetensors" for k in range(3)),
         R0 / "similarity.json", R0 / "similarity.csv", R0 / "similarity.png", R0 / GRAMS, R0 / "weights.json",
         R0 / "manifest.json", R1 / "start/c001/adapter_model.safetensors", CACHE, PACK]
FOLDERS = [Path("initial"), R0, R0 / "deltas", R1, R1 / "start/c001", R1 / "global", Path("outbox"), Path(".fedbip")]
# what each command writes: a folder, FIFO or link out at one of these is always exit 2
COMMANDS = {
    "similarity": (["similarity", "-r", 0, "--force"],
                   {R0 / n for n in ("similarity.json", "similarity.csv", "similarity.png", GRAMS, "manifest.json")}
                   | {CACHE}),
    "aggregate": (["aggregate", "-r", 0, "--force"],
                  {R0 / "weights.json", R0 / "manifest.json", CACHE, R1, R1 / "start/c001", R1 / "global"}),
    "aggregate-again": (["aggregate", "-r", 0], set()),
    "verify": (["verify", "-r", 0], set()),
    "status": (["status", "-r", 0], set()),
    "pack": (["pack", "-c", "c000", "-r", 0, "--kind", "taskvec"], {PACK}),
    "unpack": (["unpack", str(PRISTINE / PACK), "--force"], {R0 / "deltas/c000.safetensors"}),
}
KINDS = ("bytes", "not-utf8", "folder", "fifo", "link-out", "link-out-folder")


def reset() -> None:
    for folder in (ROOT, OUTSIDE):
        if folder.exists():
            shutil.rmtree(folder)
    shutil.copytree(PRISTINE, ROOT, symlinks=True)
    OUTSIDE.mkdir()
    (OUTSIDE / "victim.json").write_bytes(b'{"outside": true}\n')
    (OUTSIDE / "folder").mkdir()
    (OUTSIDE / "folder" / "victim.txt").write_bytes(b"outside\n")


def plant(rel: Path, kind: str, data: bytes) -> None:
    """Replace what is at `rel` (file or folder, or nothing) by the hostile `kind`."""
    path = ROOT / rel
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "bytes":
        path.write_bytes(data)
    elif kind == "not-utf8":
        path.write_bytes(b'{"format": "\xff\xfe' + data + b'"}\n')
    elif kind == "folder":
        path.mkdir()
        (path / "inside").write_bytes(data)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-out":
        path.symlink_to(OUTSIDE / "victim.json")
    else:
        path.symlink_to(OUTSIDE / "folder", target_is_directory=True)


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under root: file bytes, folder, link target, or FIFO (never opened)."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if name.endswith(".lock"):
                continue
            st_ = p.lstat()
            key = str(p.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                out[key] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[key] = "folder"
            elif stat.S_ISREG(st_.st_mode):
                out[key] = p.read_bytes()
            else:
                out[key] = "special"
    return out


def check(command: str, rel: Path, kind: str, result, before: dict, outside: dict) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    assert snapshot(OUTSIDE) == outside  # whatever happened, nothing outside changed
    writes = COMMANDS[command][1]
    if kind in ("folder", "fifo", "link-out", "link-out-folder") and rel in writes:
        assert result.exit_code == 2, (command, rel, kind, result.output)
    assert result.exit_code in (0, 2, 3, 75), (command, rel, kind, result.output)
    if result.exit_code != 0:  # the error is one line on stderr (stdout may hold a report, as verify's)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].split(":")[0] in ("error", "conflict", "not ready"), \
            (command, rel, kind, result.output)
    if result.exit_code in (2, 3):
        after = snapshot(ROOT)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, (command, rel, kind, changed, result.output)


@fuzz(240)
@given(st.sampled_from(FILES + FOLDERS), st.sampled_from(KINDS), st.sampled_from(sorted(COMMANDS)),
       st.binary(max_size=48))
def test_hostile_layout_path(rel, kind, command, data):
    reset()
    plant(rel, kind, data)
    before, outside = snapshot(ROOT), snapshot(OUTSIDE)
    result = _invoke(*COMMANDS[command][0], "-w", ROOT)
    check(command, rel, kind, result, before, outside)


def teardown_module() -> None:
    shutil.rmtree(BASE, ignore_errors=True)
