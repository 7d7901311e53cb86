"""A lock per workspace step (e.g. `aggregate` of round 3), so a second concurrent run fails at once.

Built on flock(2): the kernel drops the lock when its process dies, so a lock left by a killed run
is never honoured; the pid written into the file only serves the error message and the note that
a stale lock was recovered.
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
from fedbip_cli.errors import UserError


@contextmanager
def step_lock(folder: Path, step: str) -> Iterator[str | None]:
    """Hold `.{step}.lock` in `folder` for the duration; yields a note if a stale lock was recovered."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{step.replace('/', '-')}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{path}: `{step}` is already running for this round ({holder}); "
                            f"wait for it to finish") from None
        sweep_tree(folder)  # temporaries of killed writers
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        note = f"recovered a stale lock left by {previous}" if previous else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield note
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Wait for an exclusive flock on `path` (short read-modify-write sections such as the manifest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
