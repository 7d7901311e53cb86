"""Hostile things planted at a workspace path, and the rule a command must keep when it meets one
(issue 22): used by the coordinator's and the site's layout fuzz tests.

The rule: the command ends with exit 0, or with one line and exit 2 (75: not ready, 3: a conflict) and
not a byte changed inside the workspace; a folder, FIFO or link out where the command writes is always
exit 2; a file outside the workspace is never changed, and nothing is created outside it."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

KINDS = ("bytes", "not-utf8", "folder", "fifo", "link-out", "link-out-folder")
"""What is planted: random bytes, bytes that are not UTF-8 inside a JSON-looking line, a folder, a FIFO,
a symlink to a file outside the workspace, a symlink to a folder outside it."""
WRONG_TYPE = ("folder", "fifo", "link-out", "link-out-folder")
"""Kinds that are never acceptable where a command writes."""


def reset(pristine: Path, root: Path, outside: Path) -> None:
    """`root` a fresh copy of `pristine`; `outside` a folder of victims that must never change."""
    for folder in (root, outside):
        if folder.exists():
            shutil.rmtree(folder)
    shutil.copytree(pristine, root, symlinks=True)
    outside.mkdir()
    (outside / "victim.json").write_bytes(b'{"outside": true}\n')
    (outside / "folder").mkdir()
    (outside / "folder" / "victim.txt").write_bytes(b"outside\n")


def plant(path: Path, kind: str, data: bytes, outside: Path) -> None:
    """Replace what is at `path` (file or folder, or nothing) by the hostile `kind`."""
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
        path.symlink_to(outside / "victim.json")
    else:
        path.symlink_to(outside / "folder", target_is_directory=True)


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


def check(result, *, root: Path, outside: Path, writes: bool, kind: str, before: dict, outside_before: dict,
          what: tuple, folder: bool = False) -> None:
    """The rule above, for one command's `result` (a typer CliRunner result). `writes`: whether the planted
    path is one the command writes; `folder`: whether the layout has a folder there (where a planted folder
    is the right kind of thing, only with other contents)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (what, repr(result.exception))
    assert "Traceback" not in result.output, result.output
    assert snapshot(outside) == outside_before  # whatever happened, nothing outside changed
    if kind in WRONG_TYPE and writes and not (folder and kind == "folder"):
        assert result.exit_code == 2, (what, result.output)
    assert result.exit_code in (0, 2, 3, 75), (what, result.output)
    if result.exit_code != 0:  # the error is one line on stderr (stdout may hold a report, as verify's)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].split(":")[0] in ("error", "conflict", "not ready"), \
            (what, result.output)
    if result.exit_code in (2, 3):
        after = snapshot(root)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, (what, changed, result.output)
