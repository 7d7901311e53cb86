"""The label map (`labels.json` in the workspace): the order of classes every client's head shares.

Labels may be strings or integers in the data files and are matched as strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.regular import read_json
from fedbip_cli.errors import UserError


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Numeric order when every label is an integer, else alphabetical."""
    unique = set(labels)
    if all(lab.lstrip("-").isdigit() for lab in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def read_label_map(path: Path) -> list[str]:
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(lab, str) for lab in labels):
        raise UserError(f"{path}: label map must be a non-empty JSON list of strings")
    if len(set(labels)) != len(labels):
        raise UserError(f"{path}: label map holds duplicate labels")
    return labels


def write_label_map(path: Path, labels: list[str]) -> None:
    atomic.write_json(path, labels)


def encode_labels(names: list[str], labels: list[str], source: str | Path) -> list[int]:
    """Label indices through the label map; a label outside it is an error naming it and the data."""
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for name in names:
        if name not in index:
            raise UserError(f"{source}: label {name!r} is not in the label map ({', '.join(labels[:10])})")
        out.append(index[name])
    return out
