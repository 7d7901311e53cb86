"""Adapters and task vectors as Flower records, and back to the same files.

Why byte-exact: the coordinator checks that each task vector was made from the start adapter it
holds, by the sha256 of that adapter's weights file. So a site must write the adapter it receives
with the same bytes as the coordinator's copy. Both sides write through `core.files.safetensors_io` (sorted tensor
names, `{"format": "pt"}` metadata, each tensor's declared dtype), the writer the aggregation engine
uses, and the receiver checks the sha256 the sender put beside the arrays.

A task vector keeps its metadata (client, round, fingerprint, start sha256, ...) as a JSON string in
the message's ConfigRecord, key order included, so the coordinator's file has the site's bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from fedbip_cli.core.files import safetensors_io
from fedbip_cli.core.files.adapter import check_lora_config, read_adapter, save_adapter
from fedbip_cli.core.files.hashes import sha256_file
from fedbip_cli.core.files.taskvec import open_taskvec
from fedbip_cli.errors import UserError
from fedbip_cli.workspace.task_types import task_type

ARRAYS = "arrays"  # RecordDict keys, the same as Flower's stock strategies use
CONFIG = "config"
METRICS = "metrics"

ADAPTER_CONFIG = "adapter-config"
ADAPTER_DTYPES = "adapter-dtypes"
ADAPTER_SHA256 = "adapter-sha256"
TASKVEC_META = "taskvec-meta"
SITE = "site"  # config entries of the messages both ways
ROUND = "round"  # the fedbip round (Flower's server rounds count from 1 and do not survive a restart)
WANT_INITIAL = "want-initial"


def scalar(record: ConfigRecord | MetricRecord, key: str) -> int | float | str:
    """record[key] where it is a scalar, what int() and float() take (flwr types a record's values as one
    union of scalars, bytes and lists); a UserError otherwise."""
    value = record[key]
    if not isinstance(value, (int, float, str)):
        raise UserError(f"message entry {key!r}: expected a number or a string, got {type(value).__name__}")
    return value


def eval_keys(name: str) -> tuple[str, ...]:
    """What a site's evaluate reply carries besides num-examples: the task type's metrics, hyphenated
    as Flower's metric keys are (accuracy, macro-f1, loss; causal-lm: exact-match, token-f1, loss)."""
    return tuple(m.replace("_", "-") for m in task_type(name).metrics)


def arrays_of(folder_or_file: Path) -> ArrayRecord:
    """Every tensor of a safetensors file (or an adapter folder's weights) as a float32 ArrayRecord."""
    path = Path(folder_or_file)
    header = safetensors_io.read_header(path if path.is_file() else read_adapter(path).weights_path)
    return ArrayRecord({name: Array(safetensors_io.read_tensor(header, name)) for name in sorted(header.tensors)})


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: np.asarray(array.numpy(), dtype=np.float32) for name, array in record.items()}


def adapter_to_record(folder: Path) -> tuple[ArrayRecord, dict[str, str]]:
    """An adapter folder as (tensors, config entries): its adapter_config.json, dtypes and sha256."""
    adapter = read_adapter(folder)
    meta = {
        ADAPTER_CONFIG: json.dumps(adapter.config, sort_keys=True),
        ADAPTER_DTYPES: json.dumps({n: adapter.header.tensors[n].dtype for n in adapter.names}, sort_keys=True),
        ADAPTER_SHA256: sha256_file(adapter.weights_path),
    }
    return arrays_of(folder), meta


def record_to_adapter(arrays: ArrayRecord, meta: Mapping[str, Any], folder: Path) -> Path:
    """Write a received adapter as a PEFT folder; nothing is rewritten when it is already there.

    Raises UserError when the written weights do not hash to the sender's sha256 (then the coordinator
    would refuse this site's task vector at the end of the round; better to fail here, naming it).
    """
    folder = Path(folder)
    expected = str(meta.get(ADAPTER_SHA256, ""))
    weights = folder / "adapter_model.safetensors"
    if expected and weights.is_file() and sha256_file(weights) == expected:
        return folder
    try:
        config = json.loads(str(meta[ADAPTER_CONFIG]))
        dtypes = json.loads(str(meta[ADAPTER_DTYPES]))
    except (KeyError, ValueError, RecursionError):  # RecursionError: JSON nested absurdly deep by the sender
        raise UserError(f"{folder}: the message carries no valid {ADAPTER_CONFIG}/{ADAPTER_DTYPES}") from None
    check_lora_config(config, f"{folder}: the message's {ADAPTER_CONFIG}")
    if not isinstance(dtypes, dict) or not all(v in ("F32", "F16", "BF16", "F64") for v in dtypes.values()):
        raise UserError(f"{folder}: the message's {ADAPTER_DTYPES} must map tensor names to F32, F16, BF16 or F64")
    save_adapter(folder, config, numpy_of(arrays), dtypes)
    if expected and sha256_file(weights) != expected:
        raise UserError(f"{weights}: written adapter does not match the sender's sha256 {expected[:12]}...")
    return folder


def taskvec_to_record(path: Path) -> tuple[ArrayRecord, str]:
    """A task vector file as (float32 tensors, its metadata as a JSON string)."""
    tv = open_taskvec(path)
    return arrays_of(tv.path), json.dumps(tv.header.metadata)


def record_to_taskvec(arrays: ArrayRecord, meta_json: str, path: Path) -> Path:
    """Write a received task vector file (metadata in the sender's key order) and check it opens."""
    try:
        metadata = json.loads(meta_json)
    except (ValueError, RecursionError):
        raise UserError(f"{path}: the message's {TASKVEC_META} is not JSON") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{path}: the message's {TASKVEC_META} is not a JSON object")
    safetensors_io.save(path, numpy_of(arrays), {str(k): str(v) for k, v in metadata.items()})
    try:
        open_taskvec(path)
    except UserError:
        path.unlink()  # a refused vector is not left among the round's inputs
        raise
    return path
