"""The exceptions the CLI turns into one line and an exit code that automation can act on.

    0   done, or nothing to do because it is already done
    2   UserError: bad input (a file, key or value is wrong); fix it, retrying will not help
    3   RoundConflict: the round is final (its adapters exist) and new or changed inputs would
        rewrite them; nothing was changed (use --force to redo it deliberately)
    75  NotReady (EX_TEMPFAIL): not ready yet (too few task vectors, an upload still in progress,
        an earlier round not finished, the same step running elsewhere); retry later
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_CONFLICT = 3
EXIT_NOT_READY = 75  # sysexits.h EX_TEMPFAIL


class UserError(Exception):
    """A problem with the user's input (file, key, value): reported as one line, never a traceback.

    The message must name the file, key or value at fault and say what is wrong with it.
    """

    exit_code = EXIT_BAD_INPUT


class BadRows(UserError):
    """Several bad lines of one input file, each reported on its own line (`FILE:LINE: problem`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class NotReady(UserError):
    """Nothing is wrong, but what the step needs is not there yet: a cron job retries later."""

    exit_code = EXIT_NOT_READY


class IncompleteFile(NotReady):
    """A file shorter than its own header declares: most likely an upload or copy still in progress."""


class RoundConflict(UserError):
    """The round's outputs exist and the step would change them: it refuses and changes nothing."""

    exit_code = EXIT_CONFLICT
