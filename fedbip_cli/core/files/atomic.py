"""Crash-safe writes: every output goes to a temporary name in its own folder and is renamed into place.

A crash or a kill therefore leaves either the old file or the new one, never half of one. The
temporaries get the modes an ordinary open()/mkdir() would give (0666/0777 less the umask: 0644 and
0755 under umask 022), not mkstemp's private 0600/0700, so an sftp or rsync account of the same
group can read what fedbip wrote.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from fedbip_cli.core.files.targets import check_target


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), where Linux tells it (/proc), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _writer_alive(pid: int, leftover: Path) -> bool:
    """Whether the process that wrote `leftover` may still be writing it.

    A pid is reused: in a container every run may get the same small pid, and then a killed run's
    temporaries carry the pid of the very process that finds them. The writer is alive only if a
    process with that pid runs and started before the leftover was last written (2 s of slack for
    the coarse start time)."""
    if not _pid_alive(pid):
        return False
    started = _started_at(pid)
    if started is None:
        return pid != os.getpid()  # without /proc: this process never sweeps what it is writing itself
    try:
        written = leftover.lstat().st_mtime
    except FileNotFoundError:
        return True
    return written >= started - 2.0


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), so threads that
    create files meanwhile never see a zero umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode every file fedbip writes gets: what a plain open() would give (0666 less the umask)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode every folder fedbip writes gets: what a plain mkdir() would give (0777 less the umask)."""
    return 0o777 & ~current_umask()


def settle_tree(folder: Path) -> None:
    """Give every file and folder under `folder` the umask's modes, and fsync the files, before the
    folder is renamed into place.

    Writers that fedbip does not control create private files: safetensors' `save_file` (behind peft's
    and transformers' `save_pretrained`) writes 0600 whatever the umask, and mkstemp/mkdtemp make
    0600/0700. This is the one place that puts the umask back on all of them, so an adapter folder is
    as readable as the rest of the workspace. Links (never written by fedbip) are left alone."""
    files, folders = file_mode(), folder_mode()
    os.chmod(folder, folders)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                os.chmod(child, folders)
        for name in filenames:
            child = os.path.join(dirpath, name)
            if os.path.islink(child):
                continue
            fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                executable = os.fstat(fd).st_mode & 0o100
                os.fchmod(fd, (folders if executable else files))
                os.fsync(fd)
            finally:
                os.close(fd)


def shared_temp_file(path: Path) -> tuple[int, str]:
    """mkstemp beside `path`, with the mode a plain open() would give it (0666 less the umask)."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())
    return fd, tmp


def temp_prefix(path: Path) -> str:
    """Temporary names carry the writer's pid, so leftovers of a killed writer can be recognised."""
    return f".{path.name}.{os.getpid()}."


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\..+\.tmp|old-(?P<aside>\d+))$")


def _sweep_one(child: Path) -> None:
    m = _LEFTOVER.match(child.name)
    if not m:
        return
    pid = int(m.group("pid") or m.group("aside"))
    if _writer_alive(pid, child):
        return
    target = child.parent / m.group("name")
    if m.group("aside") and not target.exists():
        os.replace(child, target)  # killed between its two renames: the old complete folder goes back
    elif child.is_dir():
        shutil.rmtree(child, ignore_errors=True)
    else:
        child.unlink(missing_ok=True)


def sweep_stale(path: Path) -> None:
    """Clear what dead writers left beside `path`: temporaries are removed, and an old folder that a
    writer set aside before being killed between its two renames is put back."""
    if path.parent.is_dir():
        for child in path.parent.glob(f".{glob.escape(path.name)}.*"):
            _sweep_one(child)


def sweep_tree(folder: Path) -> None:
    """sweep_stale for every leftover anywhere under `folder` (writers that are alive are left alone)."""
    if folder.is_dir():
        for child in sorted(folder.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
            _sweep_one(child)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it over `path`.

    >>> with atomic_open("out.json", "w") as f:
    ...     f.write("{}")
    """
    path = Path(path)
    check_target(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = shared_temp_file(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a log file (a single write of a whole line, then fsync)."""
    path = Path(path)
    check_target(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary name beside `path`, then swap it into place.

    If `path` already exists it is moved aside first and removed after the swap, so at every
    moment either the complete old folder or the complete new one is at `path` (or, for the
    instant between the two renames, the old one under its aside name).
    """
    path = Path(path)
    check_target(path, "folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        settle_tree(tmp)
        aside = None
        if path.exists():
            aside = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, aside)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if aside is not None and aside.is_symlink():
            aside.unlink()  # a link (inside the workspace) was replaced: remove the link, never its target
        elif aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
