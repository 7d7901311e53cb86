"""Client names are used as file and folder names: only a safe, portable alphabet is accepted."""

from __future__ import annotations

import re

from fedbip_cli.errors import UserError

_CLIENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_client_name(name: str, where: str = "client") -> str:
    """Return `name` if it is a safe client id, else raise UserError naming it.

    Allowed: letters, digits, '_', '-', '.', starting with a letter or digit, at most 64 characters,
    and no '..'. This rules out path separators, absolute paths, shell metacharacters and control
    characters, so a client id can never lead a write outside the workspace.
    """
    if not isinstance(name, str) or not _CLIENT.match(name) or ".." in name:
        raise UserError(f"{where}: invalid client name {name!r}: use letters, digits, '_', '-', '.' (max 64, no '..')")
    return name
