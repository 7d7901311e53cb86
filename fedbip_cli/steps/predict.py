"""`fedbip predict`: a client's adapter of a round applied to a file of new examples, in batches.

Input rows are read and checked first (every bad row is reported, one line each, and nothing is
written); then predictions stream out one JSON line per row, in the input's order. The task type
reads each row and makes its predictions (`Task.predict_item`, `Task.predict`):
- text-classification: {"row", "label", "probabilities": {label: p}} (rows: JSONL or CSV with task.text_field);
- causal-lm: {"row", "generation"} (rows: JSONL with task.prompt_field, or Alpaca instruction/input);
- image-classification: {"row", "label", "probabilities"} (an .npz of images, or JSONL/CSV with an
  `image` field holding a file path relative to the input file).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from fedbip_cli.client.readers import csv_rows, jsonl_rows
from fedbip_cli.errors import BadRows, UserError
from fedbip_cli.steps.site import SiteRuntime
from fedbip_cli.workspace.layout import Workspace

if TYPE_CHECKING:  # the task modules import torch; this module loads it only when it predicts
    from fedbip_cli.client.tasks.base import Task

MAX_REPORTED = 20
"""Bad rows listed in the error (the count says how many more)."""


@dataclass
class Rows:
    """The checked inputs: row ids (line numbers, or indices for .npz) and one item per row."""

    ids: list[int]
    items: list[Any]


def read_rows(task: Task, path: Path) -> Rows:
    """Every row of the input, checked by the task type (`predict_file`, `predict_item`); all bad rows
    in one UserError, one line each."""

    path = Path(path)
    whole = task.predict_file(path)
    if whole is not None:
        return Rows(list(range(len(whole))), whole)
    if not path.is_file():
        raise UserError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    errors: list[str] = []  # the readers add malformed lines here instead of stopping at the first
    if suffix in (".csv", ".tsv") and suffix in task.predict_formats:
        raw = csv_rows(path, "\t" if suffix == ".tsv" else ",", errors=errors)
    elif suffix in (".jsonl", ".json", ".ndjson") and suffix in task.predict_formats:
        raw = jsonl_rows(path, errors=errors)
    else:
        shown = {".json": ".jsonl", ".ndjson": ".jsonl", ".tsv": ".csv"}  # one name per reader
        allowed = " or ".join(dict.fromkeys(shown.get(f, f) for f in task.predict_formats))
        raise UserError(f"{path}: unsupported input format {suffix!r} (use {allowed})")
    ids, items = [], []
    for line, row in raw:
        try:
            items.append(task.predict_item(path, line, row))
            ids.append(line)
        except UserError as e:
            errors.append(str(e))
    errors.sort(key=_line_of)
    if errors:
        more = [f"{path}: ... and {len(errors) - MAX_REPORTED} more bad rows"] if len(errors) > MAX_REPORTED else []
        raise BadRows(errors[:MAX_REPORTED] + more)
    if not items:
        raise UserError(f"{path}: holds no rows to predict")
    return Rows(ids, items)


def _line_of(message: str) -> int:
    """The line number in a `FILE:LINE: message` error, for reporting bad rows in file order."""
    parts = message.split(":")
    return next((int(p) for p in parts[1:3] if p.isdigit()), 0)


def predict(ws: Workspace, client: str, t: int, input_path: str | Path, sink: IO[str], *,
            batch_size: int = 32, runtime: SiteRuntime | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Predict every row of `input_path` with `client`'s adapter of round t, writing JSON lines to `sink`;
    returns a summary (rows, label counts or mean generation length, seconds)."""
    # lazy: torch (~3 s)
    import torch

    ws.client(client)
    rt = runtime or SiteRuntime(ws)
    rows = read_rows(rt.task, Path(input_path))
    folder = ws.resolve_start(t, client)
    cm = rt.model_for(client)
    cm.load(folder)
    cm.model.eval()
    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    done, labels = 0, rt.labels
    for s in range(0, len(rows.items), batch_size):
        batch = rows.items[s:s + batch_size]
        with torch.inference_mode():
            results = rt.task.predict(cm, batch, labels)
        for row_id, result in zip(rows.ids[s:s + batch_size], results):
            sink.write(json.dumps({"row": row_id, **result}) + "\n")
            counts[result.get("label", "")] += 1
        done += len(batch)
        if on_progress:
            on_progress(done, len(rows.items))
    summary: dict[str, Any] = {"client": client, "round": t, "adapter": ws.relative(folder),
                               "input": ws.relative(input_path), "rows": done,
                               "seconds": round(time.perf_counter() - t0, 3)}
    if rt.task.uses_labels:
        summary["label_counts"] = dict(sorted(counts.items()))
    return summary
