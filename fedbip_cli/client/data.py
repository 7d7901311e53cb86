"""Client data: JSONL or CSV files of (text, label) read with line-numbered errors, and the label map.

The label map (`labels.json` in the workspace) fixes the order of classes so every client's head
means the same thing; labels may be strings or integers in the files and are matched as strings.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..core import atomic
from ..errors import UserError


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    task: str | None = None


def read_examples(path: str | Path, text_field: str = "text", label_field: str = "label",
                  task_field: str | None = None) -> list[Example]:
    """Read a .jsonl/.json-lines or .csv/.tsv file; every malformed line is an error naming its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read data file: {e}") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(path, text)
    else:
        raise UserError(f"{path}: unsupported data format {suffix!r} (use .jsonl or .csv)")
    out = []
    for line, row in rows:
        if text_field not in row or label_field not in row:
            raise UserError(f"{path}:{line}: missing field {text_field!r} or {label_field!r}")
        value, label = row[text_field], row[label_field]
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}:{line}: field {text_field!r} must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label).strip() == "":
            raise UserError(f"{path}:{line}: field {label_field!r} must be a string or an integer, got {label!r}")
        task = None
        if task_field is not None:
            task = row.get(task_field, "default")  # rows without one belong to the client's default task
            if not isinstance(task, str) or not task.strip():
                raise UserError(f"{path}:{line}: field {task_field!r} (the task name) must be a non-empty string")
        out.append(Example(value, str(label).strip(), task))
    if not out:
        raise UserError(f"{path}: data file holds no examples")
    return out


def _jsonl_rows(path: Path, text: str) -> Iterable[tuple[int, dict]]:
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


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterable[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"{path}:{reader.line_num}: wrong number of columns")
            yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Numeric order when every label is an integer, else alphabetical."""
    unique = set(labels)
    if all(l.lstrip("-").isdigit() for l in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def read_label_map(path: Path) -> list[str]:
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read label map: {e}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(l, str) for l in labels):
        raise UserError(f"{path}: label map must be a non-empty JSON list of strings")
    if len(set(labels)) != len(labels):
        raise UserError(f"{path}: label map holds duplicate labels")
    return labels


def write_label_map(path: Path, labels: list[str]) -> None:
    atomic.write_json(path, labels)


def encode(examples: list[Example], labels: list[str], source: str | Path) -> list[int]:
    """Label indices; a label outside the map is an error naming it and the file."""
    index = {l: i for i, l in enumerate(labels)}
    out = []
    for ex in examples:
        if ex.label not in index:
            raise UserError(f"{source}: label {ex.label!r} is not in the label map ({', '.join(labels[:10])})")
        out.append(index[ex.label])
    return out
