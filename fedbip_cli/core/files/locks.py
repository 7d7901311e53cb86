"""A lock per workspace step (e.g. `aggregate` of round 3), so a second concurrent run fails at once.

Built on flock(2): the kernel drops the lock when its process dies, so a lock left by a killed run
is never honoured; the pid written into the file only serves the error message and the note that
a stale lock was recovered. The holder removes the lock file before it lets go, so round folders
hold only federation files once a step ends (and nothing of it travels with rsync); whoever then
finds it has locked a file that is no longer at its path tries again on the current one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedbip_cli.core.files.atomic import sweep_tree
from fedbip_cli.errors import NotReady


def _locked(path: Path, wait: bool) -> tuple[int | None, str]:
    """(fd holding the flock of the file now at `path`, created if need be, ""), or (None, who holds
    it) when another process does and `wait` is False."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return None, holder
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, ""
        os.close(fd)  # its holder removed it while we waited: lock the current file instead


def _release(path: Path, fd: int) -> None:
    """Remove the lock file, then let go of it (in this order: nobody can lock a removed file unseen)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def clear_unheld_locks(folder: Path, keep: Path) -> None:
    """Remove the lock files in `folder` that no process holds (left by killed runs), but `keep`."""
    for path in folder.glob(".*.lock"):
        if path == keep:
            continue
        fd, _ = _locked(path, wait=False)
        if fd is not None:
            _release(path, fd)


@contextmanager
def step_lock(folder: Path, step: str) -> Iterator[str | None]:
    """Hold `.{step}.lock` in `folder` for the duration; yields a note if a stale lock was recovered.

    A second run of the same step raises NotReady (exit 75: retry later)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{step.replace('/', '-')}.lock"
    fd, holder = _locked(path, wait=False)
    if fd is None:
        raise NotReady(f"{path}: `{step}` is already running for this round ({holder}); wait for it to finish")
    try:
        sweep_tree(folder)  # temporaries of killed writers
        clear_unheld_locks(folder, path)  # and the lock files they held
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        note = f"recovered a stale lock left by {previous}" if previous else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield note
    finally:
        _release(path, fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Wait for an exclusive flock on `path` (short read-modify-write sections such as the manifest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = _locked(path, wait=True)
    assert fd is not None  # a waiting lock always ends holding it
    try:
        yield
    finally:
        _release(path, fd)
