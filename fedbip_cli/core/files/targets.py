"""Where fedbip may write: checks on every path it creates, replaces or appends to, before a byte is written.

Two classes of hostile or careless workspaces are refused here, with one line and exit code 2:

- a path that is not what it should be: a folder, FIFO, socket or device where a file goes (appending
  to a FIFO would block forever; to a device, write anywhere), a file where a folder goes, a file
  where a parent folder goes;
- a path that leads out: a symlink, on the path itself or on any folder above it, whose target lies
  outside the folders this command may write to (the workspace and the `--out` paths the user named
  on the command line). A link that stays inside is followed.

The folders a command may write to are held in a context variable for the duration of one command
(`write_scope`, entered by the CLI for every command; `allow` adds one: the workspace, the `--out` paths, and
fedbip's own cache of dequantized GGUF bases, `$FEDBIP_CACHE`). Outside any scope (fedbip used
as a library) every write is checked for its type only, and the workspace's own checks
(`Workspace.check_writes`) still hold its paths to its root.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from fedbip_cli.errors import UserError

_ROOTS: ContextVar[tuple[str, ...] | None] = ContextVar("fedbip_write_roots", default=None)

KINDS = ("file", "folder")


@contextmanager
def write_scope() -> Iterator[None]:
    """A scope in which writes are confined to the folders `allow` names (none yet: the command adds them)."""
    token = _ROOTS.set(())
    try:
        yield
    finally:
        _ROOTS.reset(token)


def allow(root: str | os.PathLike[str]) -> None:
    """Let the current scope write under `root` (a workspace, or a path the user named with --out).

    Outside a scope this does nothing: a library caller's writes are checked for type only."""
    roots = _ROOTS.get()
    if roots is not None:
        _ROOTS.set(roots + (os.path.realpath(root),))


def write_roots() -> tuple[str, ...] | None:
    """The resolved folders the current scope may write under (None outside a scope)."""
    return _ROOTS.get()


def _under(resolved: str, roots: tuple[str, ...]) -> bool:
    return any(resolved == r or resolved.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def describe(mode: int) -> str:
    """What a file-system object is, in words, for error messages."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a file"
    return "not a regular file"


def check_target(path: str | os.PathLike[str], kind: str = "file",
                 roots: tuple[str | os.PathLike[str], ...] | None = None) -> None:
    """Refuse (UserError) to write `path` as a `kind` ("file" or "folder") when it, or a folder above it,
    is the wrong type, or when it leads out of `roots` (default: the current scope's)."""
    path = Path(path)
    allowed = write_roots() if roots is None else tuple(os.path.realpath(r) for r in roots)
    if allowed is not None:
        resolved = os.path.realpath(path)
        if not _under(resolved, allowed):
            raise UserError(f"{path}: leads outside the workspace (to {resolved}); fedbip writes only inside the "
                            f"workspace and the --out paths named on its command line")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        _check_parents(path)
        return
    except NotADirectoryError:
        _check_parents(path)
        raise UserError(f"{path}: a folder above it is not a folder; refused") from None
    except OSError as e:
        raise UserError(f"{path}: cannot write: {e.strerror}") from None
    if kind == "folder" and not stat.S_ISDIR(mode):
        raise UserError(f"{path}: is {describe(mode)}, where fedbip writes a folder; refused (nothing written)")
    if kind == "file" and not stat.S_ISREG(mode):
        raise UserError(f"{path}: is {describe(mode)}, where fedbip writes a file; refused (nothing written)")


def _check_parents(path: Path) -> None:
    """The nearest existing folder above a path still to be created must be a folder."""
    for parent in path.parents:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise UserError(f"{parent}: cannot write: {e.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise UserError(f"{parent}: is {describe(mode)}, where fedbip needs a folder (to write {path.name}); "
                            f"refused")
        return
