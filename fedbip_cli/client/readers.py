"""Line-numbered readers of the data files every task type shares: JSONL and CSV/TSV.

Every malformed line is a UserError naming the file and the line, never a traceback. Files are read
line by line, each line bounded (MAX_LINE_BYTES): a single huge line is refused after reading at most
that much of it, instead of taking gigabytes. Lines end at "\\n" only (and "\\r\\n"): JSON strings may
hold U+2028, U+0085 and other characters that `str.splitlines` would split on.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from fedbip_cli.core.files.regular import open_regular
from fedbip_cli.errors import UserError

MAX_LINE_BYTES = 1 << 20
"""The longest line a data file may hold (1 MiB: a text example of ~150,000 words)."""


def data_lines(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending) of a UTF-8 text file, read one bounded line at a time."""

    with os.fdopen(open_regular(path), "rb") as f:
        number = 0
        while True:
            try:
                raw = f.readline(max_line_bytes + 1)
            except OSError as e:
                raise UserError(f"{path}: cannot read data file: {e.strerror}") from None
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not (len(raw) == max_line_bytes + 1 and raw.endswith(b"\n")):
                raise UserError(f"{path}:{number}: line longer than {max_line_bytes} bytes; refused")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{number}: not UTF-8 text") from None
            yield number, line[:-2] if line.endswith("\r\n") else line.rstrip("\n")


def _bad(message: str, errors: list[str] | None) -> None:
    """Raise the error, or with `errors` collect it and go on (to report every bad line at once)."""
    if errors is None:
        raise UserError(message)
    errors.append(message)


def jsonl_rows(path: Path, lines: Iterable[tuple[int, str]] | None = None,
               errors: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming it
    (collected into `errors`, and skipped, when a list is given)."""
    for i, raw in lines if lines is not None else data_lines(path):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            _bad(f"{path}:{i}: malformed JSON: {e.msg}", errors)
            continue
        except (ValueError, RecursionError):  # absurd nesting, numbers too long to convert
            _bad(f"{path}:{i}: malformed JSON: nested too deeply or a number too long", errors)
            continue
        if not isinstance(row, dict):
            _bad(f"{path}:{i}: expected a JSON object per line", errors)
            continue
        yield i, row


def csv_rows(path: Path, delimiter: str, lines: Iterable[tuple[int, str]] | None = None,
             errors: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every CSV/TSV record; a row with the wrong column count is an error
    (collected into `errors`, and skipped, when a list is given)."""
    source = lines if lines is not None else data_lines(path)
    reader = csv.DictReader((line + "\n" for _, line in source), delimiter=delimiter)
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                _bad(f"{path}:{reader.line_num}: wrong number of columns", errors)
                continue
            yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
