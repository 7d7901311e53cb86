"""Opening files that arrive from other sites: regular files only, inside the workspace, bounded in size,
and decoded as UTF-8 through one reader (`read_text`, `read_json`), so bad bytes are one line, never a
traceback.

A FIFO dropped into `deltas/` would block a plain `open()` forever (while the coordinator holds the
round's lock); a device file would feed endless bytes; a symlink could make the coordinator read, hash
or record a file anywhere on its disk. Every input is therefore opened non-blocking and checked to be a
regular file before a byte is read, and links are followed only when they stay inside the workspace.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from fedbip_cli.errors import UserError


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only file descriptor of `path`, which must be a regular file (never blocks on a FIFO).

    Raises UserError for a missing or unreadable file and for FIFOs, sockets and devices."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{path}: not a regular file (a FIFO, socket or device); refused")
    return fd


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a small regular file, refused when it holds more than `limit` bytes."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise UserError(f"{path}: {size} bytes is larger than the {limit} bytes such a file may hold")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > limit:
        raise UserError(f"{path}: larger than the {limit} bytes such a file may hold")
    return data


def inside(path: Path, roots: list[Path], what: str = "file") -> Path:
    """`path` if it (after following every link) lies under one of `roots`, else UserError."""
    resolved = path.resolve()
    for root in roots:
        try:
            resolved.relative_to(root.resolve())
            return path
        except ValueError:
            continue
    raise UserError(f"{path}: {what} leads outside the workspace (to {resolved}); links out of it are refused")


MAX_TEXT_BYTES = 64 << 20
"""The largest text file (JSON, JSONL log, YAML) fedbip reads whole: 64 MiB (a manifest of thousands of
steps is a few MB; metrics.jsonl of years of evaluations is well under this)."""


def decode_text(raw: bytes, source: str | os.PathLike[str]) -> str:
    """UTF-8 bytes as text (a leading byte-order mark dropped); bad bytes are a UserError naming `source`
    and the offset of the first bad byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r})") from None


def parse_json(text: str | bytes, source: str | os.PathLike[str]) -> Any:
    """A JSON document; malformed, nested too deeply or holding numbers too long is a UserError naming `source`."""
    if isinstance(text, bytes):
        text = decode_text(text, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError):
        raise UserError(f"{source}: malformed JSON: nested too deeply or a number too long") from None


def read_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """The one reader of every text file fedbip reads whole (its own, another site's, a user's): a regular
    file (never blocks on a FIFO), at most `limit` bytes, valid UTF-8; anything else is one UserError line
    naming the file."""
    return decode_text(read_regular(path, limit), path)


def read_json(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> Any:
    """A whole JSON file through `read_text`: a missing, unreadable, non-UTF-8 or malformed file is one
    UserError line naming it."""
    return parse_json(read_text(path, limit), path)
