"""Line-numbered readers of the data files every task type shares: JSONL and CSV/TSV.

Every malformed line is a UserError naming the file and the line, never a traceback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from fedbip_cli.errors import UserError


def read_text_file(path: Path, what: str = "data file") -> str:
    """The text of a UTF-8 file; a missing or unreadable one is an error naming it."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read {what}: {e}") from None


def _bad(message: str, errors: list[str] | None) -> None:
    """Raise the error, or with `errors` collect it and go on (to report every bad line at once)."""
    if errors is None:
        raise UserError(message)
    errors.append(message)


def jsonl_rows(path: Path, text: str, errors: list[str] | None = None) -> Iterable[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming it
    (collected into `errors`, and skipped, when a list is given)."""
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            _bad(f"{path}:{i}: malformed JSON: {e.msg}", errors)
            continue
        if not isinstance(row, dict):
            _bad(f"{path}:{i}: expected a JSON object per line", errors)
            continue
        yield i, row


def csv_rows(path: Path, text: str, delimiter: str, errors: list[str] | None = None) -> Iterable[tuple[int, dict]]:
    """(line number, row) for every CSV/TSV record; a row with the wrong column count is an error
    (collected into `errors`, and skipped, when a list is given)."""
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                _bad(f"{path}:{reader.line_num}: wrong number of columns", errors)
                continue
            yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
