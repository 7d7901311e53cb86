"""`fedbip predict`: a client's adapter of a round applied to a file of new examples, in batches.

Input rows are read and checked first (every bad row is reported, one line each, and nothing is
written); then predictions stream out one JSON line per row, in the input's order:
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
from typing import IO, Any, Callable

from fedbip_cli.errors import BadRows, UserError
from fedbip_cli.steps.site import SiteRuntime
from fedbip_cli.workspace.layout import Workspace

MAX_REPORTED = 20
"""Bad rows listed in the error (the count says how many more)."""
IMAGE_FIELD = "image"


@dataclass
class Rows:
    """The checked inputs: row ids (line numbers, or indices for .npz) and one item per row."""

    ids: list[int]
    items: list[Any]


def read_rows(ws: Workspace, path: Path) -> Rows:
    """Every row of the input, checked; all bad rows in one UserError, one line each."""
    from fedbip_cli.client.readers import csv_rows, jsonl_rows

    path = Path(path)
    task = ws.config.task
    if task.type == "image-classification" and path.suffix.lower() == ".npz":
        return _npz_rows(ws, path)
    if not path.is_file():
        raise UserError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    errors: list[str] = []  # the readers add malformed lines here instead of stopping at the first
    if suffix in (".csv", ".tsv") and task.type != "causal-lm":
        raw = csv_rows(path, "\t" if suffix == ".tsv" else ",", errors=errors)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        raw = jsonl_rows(path, errors=errors)
    else:
        allowed = ".jsonl" if task.type == "causal-lm" else ".jsonl or .csv"
        raise UserError(f"{path}: unsupported input format {suffix!r} (use {allowed})")
    ids, items = [], []
    for line, row in raw:
        try:
            items.append(_item(ws, path, line, row))
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


def _item(ws: Workspace, path: Path, line: int, row: dict) -> Any:
    task = ws.config.task
    if task.type == "text-classification":
        value = row.get(task.text_field)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}:{line}: field {task.text_field!r} must be a non-empty string")
        return value
    if task.type == "causal-lm":
        from fedbip_cli.client.tasks.causal_lm.data import template_prompt

        return template_prompt(path, line, row, task)
    value = row.get(IMAGE_FIELD)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}:{line}: field {IMAGE_FIELD!r} must be an image file path")
    image = path.parent / value
    if not image.is_file():
        raise UserError(f"{path}:{line}: image {value!r} not found")
    return image


def _npz_rows(ws: Workspace, path: Path) -> Rows:
    import numpy as np

    from fedbip_cli.client.tasks.image.data import to_uint8_hwc

    field = ws.config.task.image_field
    try:
        with np.load(path, allow_pickle=False) as npz:
            if field not in npz:
                raise UserError(f"{path}: no array {field!r} (task.image_field)")
            images = to_uint8_hwc(npz[field], path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz file: {e}") from None
    return Rows(list(range(len(images))), list(images))


def predict(ws: Workspace, client: str, t: int, input_path: str | Path, sink: IO[str], *,
            batch_size: int = 32, runtime: SiteRuntime | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Predict every row of `input_path` with `client`'s adapter of round t, writing JSON lines to `sink`;
    returns a summary (rows, label counts or mean generation length, seconds)."""
    ws.client(client)
    rows = read_rows(ws, Path(input_path))
    rt = runtime or SiteRuntime(ws)
    folder = ws.resolve_start(t, client)
    cm = rt.model_for(client)
    cm.load(folder)
    cm.model.eval()
    t0 = time.perf_counter()
    counts: Counter[str] = Counter()
    done = 0
    for s in range(0, len(rows.items), batch_size):
        batch = rows.items[s:s + batch_size]
        for row_id, result in zip(rows.ids[s:s + batch_size], _predict_batch(rt, cm, batch)):
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


def _predict_batch(rt: SiteRuntime, cm: Any, items: list[Any]) -> list[dict[str, Any]]:
    import torch

    task = rt.task
    with torch.inference_mode():
        if task.name == "causal-lm":
            return [{"generation": g} for g in _generate(rt, cm, items)]
        if task.name == "text-classification":
            from fedbip_cli.client.tasks.text.batching import collate, encode_texts
            from fedbip_cli.client.tasks.text.model import logits_of

            data = encode_texts(rt.tokenizer, items, [0] * len(items), rt.ws.config.model.max_length)
            batch = collate(data, list(range(len(items))), rt.pad_id)
            logits = logits_of(cm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        else:
            from fedbip_cli.client.tasks.image.data import ImageData

            data = ImageData(items, [0] * len(items))
            logits = cm.model(pixel_values=task.collate(data, list(range(len(items))), rt.pad_id)["pixel_values"]).logits
    return classification_rows(logits.float(), rt.labels)


def classification_rows(logits: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Per row: the most probable label and every label's probability (softmax of the logits)."""
    probs = logits.softmax(-1)
    return [{"label": labels[int(p.argmax())], "probabilities": {name: round(float(v), 6) for name, v in zip(labels, p)}}
            for p in probs]


def _generate(rt: SiteRuntime, cm: Any, prompts: list[str]) -> list[str]:
    """Greedy generations, as `fedbip eval` makes them (same tokenization, same length bound)."""
    from fedbip_cli.client.tasks.causal_lm.data import Pair, encode_pairs
    from fedbip_cli.client.tasks.causal_lm.metrics import greedy_generate

    tok = rt.tokenizer
    data = encode_pairs(tok, [Pair(p, "") for p in prompts], rt.ws.config.model.max_length, tasks=False)
    generated = greedy_generate(cm.model, [data.prompt(i) for i in range(len(data))],
                                max_new_tokens=rt.ws.config.task.max_new_tokens, pad_id=rt.pad_id,
                                eos_id=tok.eos_token_id, batch_size=len(prompts))
    return [tok.decode(g, skip_special_tokens=True).strip() for g in generated]
