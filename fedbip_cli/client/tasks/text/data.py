"""Text-classification data: JSONL or CSV files of (text, label), read with line-numbered errors, and
labels encoded through the workspace's label map (workspace/labels.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedbip_cli.client.readers import csv_rows, jsonl_rows
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.labels import encode_labels


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    task: str | None = None


def read_examples(path: str | Path, text_field: str = "text", label_field: str = "label",
                  task_field: str | None = None) -> list[Example]:
    """Read a .jsonl/.json-lines or .csv/.tsv file; every malformed line is an error naming its number."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = jsonl_rows(path)
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


def encode(examples: list[Example], labels: list[str], source: str | Path) -> list[int]:
    """Label indices; a label outside the map is an error naming it and the file."""
    return encode_labels([ex.label for ex in examples], labels, source)
