"""The one exception type that the CLI turns into exit code 2 and a single line."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, key, value): reported as one line, never a traceback.

    The message must name the file, key or value at fault and say what is wrong with it.
    """
