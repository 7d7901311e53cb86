"""`fedbip export`: one client's adapter of a round as a self-contained folder a serving stack loads
without fedbip (docs/deploy.md).

Two routes, chosen by the task type (`Task.export_route`):
- **transformers** (causal-lm, image-classification, text-classification with pooling cls): the
  PEFT adapter (`PeftModel.from_pretrained(AutoModelFor...(base), DIR)`), or with `merge` the base
  model with LoRA merged in (`AutoModelFor....from_pretrained(DIR)`, no peft).
- **sentence-transformers** (text-classification with pooling mean, the default): no transformers
  class pools by mean, so the folder is a sentence-transformers model: the encoder (its LoRA adapter,
  or merged), mean pooling, and the classification head as a linear Dense layer, so
  `SentenceTransformer(DIR).encode(texts)` returns the class logits fedbip computes.
Both carry the tokenizer or image processor, labels.json, and a model card with the adapter's
provenance, aggregation weights and evaluation metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbip_cli.core.files.adapter import CONFIG_FILE, WEIGHTS_FILE, lora_kind, module_of, read_adapter
from fedbip_cli.core.files.adapter_meta import (
    is_machine_path,
    portable_base_name,
    standard_config,
)
from fedbip_cli.core.files.atomic import atomic_dir
from fedbip_cli.core.files.model_card import render_card, top_contributors
from fedbip_cli.core.files.regular import read_text
from fedbip_cli.core.files.targets import check_target
from fedbip_cli.errors import UserError
from fedbip_cli.steps.cards import CARD_FILE, base_facts
from fedbip_cli.steps.site import SiteRuntime
from fedbip_cli.workspace.layout import Workspace, read_json
from fedbip_cli.workspace.model_path import base_name as configured_base_name
from fedbip_cli.workspace.task_types import EXPORT_ROUTES

if TYPE_CHECKING:  # the task modules import torch; this module loads it only when it exports
    from fedbip_cli.client.tasks.base import Task

LABELS_FILE = "labels.json"
HF_ROUTE, ST_ROUTE = EXPORT_ROUTES
PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path")


def export(ws: Workspace, client: str, t: int, out: str | Path, *, merge: bool = False, force: bool = False,
           runtime: SiteRuntime | None = None) -> dict[str, Any]:
    """Write `client`'s adapter of round t (the one `fedbip eval -r t` scores) as a deployable folder."""
    ws.client(client)
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"{out}: already exists (use --force to replace it)")
    # a file, FIFO or link out at --out: refused before the model loads. --out is the caller's own path, not
    # the workspace's: a CLI command's write scope confines it (allow_out); a library caller chose it.
    check_target(out, "folder")
    rt = runtime or SiteRuntime(ws)
    folder = ws.resolve_start(t, client)
    adapter = read_adapter(folder)
    cm = rt.model_for(client)
    cm.load(folder)  # one clear error if the adapter does not fit this workspace
    route = rt.task.export_route()
    if route not in (ST_ROUTE, HF_ROUTE):
        raise UserError(f"task.type {rt.task.name}: unknown export route {route!r}")
    # merging changes the model in place: a runtime of our own is used up, a caller's is left as it was
    peft_model = cm.model if runtime is None else _standard_load(rt, folder)
    base_name = portable_base_name(adapter.config.get("base_model_name_or_path"),
                                   configured_base_name(ws.config))
    with atomic_dir(out) as tmp:
        if route == ST_ROUTE:
            _write_sentence_transformer(rt, peft_model, adapter, tmp, merge)
        elif merge:
            merged = peft_model.merge_and_unload()
            _label_config(merged.config, rt.labels)
            merged.save_pretrained(str(tmp))
        else:
            config = standard_config(adapter.config, rt.task.adapter_metadata(peft_model))  # older fedbip folders too
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            (tmp / WEIGHTS_FILE).write_bytes(adapter.weights_path.read_bytes())
        _save_processor(rt, tmp)
        if rt.labels:
            (tmp / LABELS_FILE).write_text(json.dumps(rt.labels, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(export_card(ws, rt.task, client, t, route, merge), encoding="utf-8")
        scrub_machine_paths(tmp, base_name)
    return {"client": client, "round": t, "adapter": ws.relative(folder), "out": str(out), "route": route,
            "merged": merge, "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())}


def _standard_load(rt: SiteRuntime, folder: Path):
    """The adapter loaded the standard way, into fedbip's own model construction (the one eval uses)."""
    # lazy: peft (seconds: it imports transformers)
    from peft import PeftModel

    base = rt.task.build_base_model(len(rt.labels))
    model = PeftModel.from_pretrained(base, str(folder))
    model.eval()
    return model


def _label_config(config: Any, labels: list[str]) -> None:
    """id2label / label2id in a transformers config, so pipelines print label names."""
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}


def _save_processor(rt: SiteRuntime, folder: Path) -> None:
    """The tokenizer or image processor, where it is a transformers one (it has save_pretrained)."""
    processor = rt.task.processor
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(str(folder))


def _write_sentence_transformer(rt: SiteRuntime, peft_model: Any, adapter: Any, folder: Path, merge: bool) -> None:
    """A sentence-transformers folder: Transformer (adapter or merged) -> mean Pooling -> Dense head."""
    # lazy: torch (~3 s)
    import torch
    from safetensors.torch import save_file

    cfg = rt.ws.config
    merged = peft_model.merge_and_unload()  # a SequenceClassifier: encoder with LoRA merged, trained head
    encoder, head = merged.encoder, merged.classifier
    if merge:
        _label_config(encoder.config, rt.labels)
        encoder.save_pretrained(str(folder))
    else:
        _write_encoder_adapter(adapter, folder)
    hidden, num_labels = head.in_features, head.out_features
    dtype = next(encoder.parameters()).dtype
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": cfg.model.max_length, "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
    _write_json(folder / "2_Dense" / "config.json", {
        "in_features": hidden, "out_features": num_labels, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity"})
    with torch.no_grad():
        state = {"linear.weight": head.weight.detach().to(dtype).contiguous(),
                 "linear.bias": head.bias.detach().to(dtype).contiguous()}
    save_file(state, str(folder / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})


def _write_encoder_adapter(adapter: Any, folder: Path) -> None:
    """The LoRA factors of fedbip's encoder as an adapter of the bare encoder (AutoModel), the module
    sentence-transformers wraps: keys lose the `encoder.` level, the head moves to the Dense layer."""
    # lazy: safetensors.torch imports torch (~3 s)
    from safetensors.torch import load_file, save_file

    prefix, inner = "base_model.model.", "base_model.model.encoder."
    tensors = load_file(str(adapter.weights_path))
    lora = {prefix + k[len(inner):]: v for k, v in tensors.items() if k.startswith(inner) and lora_kind(k)}
    if not lora:
        raise UserError(f"{adapter.weights_path}: holds no LoRA factors of the encoder")
    targets = sorted({module_of(k).rsplit(".", 1)[-1] for k in lora})
    config = dict(adapter.config) | {"target_modules": targets, "modules_to_save": None,
                                     "task_type": "FEATURE_EXTRACTION", "auto_mapping": None}
    _write_json(folder / CONFIG_FILE, config)
    save_file(lora, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def scrub_machine_paths(folder: Path, name: str) -> None:
    """Replace any absolute path a library wrote as a model's name (config, tokenizer) by `name`."""
    for path in folder.rglob("*.json"):
        doc = read_json(path)
        if isinstance(doc, dict) and any(is_machine_path(doc.get(k)) for k in PATH_KEYS):
            for key in PATH_KEYS:
                if is_machine_path(doc.get(key)):
                    doc[key] = name
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def latest_metrics(ws: Workspace, client: str, t: int, split: str = "test") -> dict[str, Any] | None:
    """The last `fedbip eval` record of this client, round and split (metrics.jsonl), if any."""
    if not ws.metrics_path.is_file():
        return None
    found = None
    for line in read_text(ws.metrics_path).splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if (isinstance(rec, dict) and rec.get("client") == client and rec.get("round") == t
                and rec.get("split") == split):
            found = rec
    if found is None:
        return None
    skip = {"client", "round", "split", "adapter", "time", "samples", "per_task"}
    return {k: v for k, v in found.items() if k not in skip}


def export_card(ws: Workspace, task: Task, client: str, t: int, route: str, merge: bool) -> str:
    """The exported folder's card: provenance, weights received in the aggregation that made it, metrics."""
    facts = base_facts(ws, "export", t, client)
    weights_path = ws.round_dir(t - 1) / "weights.json" if t > 0 else None
    if weights_path is not None and weights_path.is_file():
        doc = read_json(weights_path)
        clients = doc.get("clients") or []
        if client in clients:
            row = doc["weights"][clients.index(client)]
            facts.strategy, facts.own_weight = doc.get("strategy"), float(row[clients.index(client)])
            facts.contributors = top_contributors(clients, row)
    metrics = latest_metrics(ws, client, t)
    facts.metrics = {"split": "test", **metrics} if metrics else None
    facts.layout = load_instructions(task, route, merge, facts.base_model, len(facts.labels or []))
    return render_card(facts)


def load_instructions(task: Task, route: str, merge: bool, base: str, num_labels: int) -> str:
    """The few lines of Python that load this folder in the standard stack."""
    if route == ST_ROUTE:
        code = ["from sentence_transformers import SentenceTransformer",
                'model = SentenceTransformer("DIR")  # encoder' + ("" if merge else " + LoRA adapter (needs peft)")
                + ", mean pooling, linear head",
                "logits = model.encode(texts, convert_to_tensor=True)  # one logit per label of labels.json"]
    else:
        code = task.load_code(merge, base, num_labels)
    return "```python\n" + "\n".join(code) + "\n```"
