"""Line-numbered readers of the data files every task type shares: JSONL and CSV/TSV.

Every malformed line is a UserError naming the file and the line, never a traceback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from fedbip_cli.errors import UserError


def jsonl_rows(path: Path, text: str) -> Iterable[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming it."""
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: malformed JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: expected a JSON object per line")
        yield i, row


def csv_rows(path: Path, text: str, delimiter: str) -> Iterable[tuple[int, dict]]:
    """(line number, row) for every CSV/TSV record; a row with the wrong column count is an error."""
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"{path}:{reader.line_num}: wrong number of columns")
            yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
