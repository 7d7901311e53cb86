"""Site steps: what a site runs for its client on its own workspace: initial adapter, local fine-tuning,
task vector, evaluation (the model-side work is done by the client side, client/).

`SiteRuntime` keeps the model and tokenizer loaded between calls, so `simulate` pays for them once;
each CLI command makes a fresh one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.adapter import CONFIG_FILE, read_adapter
from fedbip_cli.core.files.hashes import sha256_file, stable_seed
from fedbip_cli.core.files.locks import step_lock
from fedbip_cli.core.files.manifest import check_step, read_manifest, record_step
from fedbip_cli.core.files.regular import read_text
from fedbip_cli.core.files.taskvec import TaskVectorMeta, write_taskvec
from fedbip_cli.core.site.privacy import ledger_path, privatize, release_rho, zcdp_epsilon
from fedbip_cli.errors import UserError
from fedbip_cli.steps.cards import CARD_FILE, site_card
from fedbip_cli.workspace.config import CONFIG_FILE as WORKSPACE_CONFIG
from fedbip_cli.workspace.config import parse_config
from fedbip_cli.workspace.labels import read_label_map, sort_labels, write_label_map
from fedbip_cli.workspace.layout import Workspace, read_json
from fedbip_cli.workspace.model_path import base_fingerprint
from fedbip_cli.workspace.template import render

TRAINING_INFO = "fedbip_training.json"


@dataclass
class SiteRuntime:
    """Lazily loaded task, model(s), processor and prepared data for one workspace.

    The task type (client/tasks/) reads and prepares the data; clients that set their own LoRA rank
    or alpha get a model of their own (`model_for`), the others share `model`.
    """

    ws: Workspace
    _model: Any = None
    _task: Any = None
    _models: dict = field(default_factory=dict)
    _data: dict = field(default_factory=dict)

    def sharing(self, ws: Workspace) -> "SiteRuntime":
        """A runtime for another workspace with the same model, task and clients, sharing what is loaded."""
        return SiteRuntime(ws, _model=self.model, _task=self.task, _models=self._models, _data=self._data)

    @property
    def task(self):
        if self._task is None:
            # lazy: torch (~3 s); `fedbip init` and the data checks need none
            from fedbip_cli.client.tasks import make_task

            self._task = make_task(self.ws.config)
        return self._task

    @property
    def labels(self) -> list[str]:
        return ensure_labels(self.ws) if self.task.uses_labels else []

    @property
    def model(self):
        """The model with the workspace's LoRA settings."""
        if self._model is None:
            # lazy: torch (~3 s)
            from fedbip_cli.client.session import ClientModel

            self._model = ClientModel(self.ws.config, len(self.labels), self.task)
        return self._model

    def model_for(self, client: str):
        """The model with `client`'s LoRA settings (`model` unless it sets its own rank or alpha)."""
        lora = self.ws.config.for_client(client).lora
        key = (lora.r, lora.alpha)
        if key == (self.ws.config.lora.r, self.ws.config.lora.alpha):
            return self.model
        if key not in self._models:
            # lazy: torch (~3 s)
            from fedbip_cli.client.session import ClientModel

            self._models[key] = ClientModel(self.ws.config.for_client(client), len(self.labels), self.task)
        return self._models[key]

    @property
    def tokenizer(self):
        """The task's processor: a tokenizer (text, causal-lm) or an image processor."""
        return self.task.processor

    @property
    def pad_id(self) -> int:
        return self.task.pad_id

    def split(self, client: str, split: str):
        """Prepared examples of one client's split ('train', 'validation' or 'test')."""
        key = (client, split)
        if key not in self._data:
            cc = self.ws.client(client)
            rel = getattr(cc, split)
            if rel is None:
                raise UserError(f"{self.ws.config_path}: clients.{client}.{split} is not set")
            self._data[key] = self.task.load_split(self.ws.data_path(rel), self.labels)
        return self._data[key]


def ensure_labels(ws: Workspace) -> list[str]:
    """The label map; built from the clients' training files when none is set and all are here.

    A labels.json that is there is the user's (or an earlier run's): it is used, or refused when it is
    invalid, and never replaced by a collected one."""
    if ws.labels_path.exists() or ws.labels_path.is_symlink() or ws.config.task.labels:
        return ws.labels()
    if all(ws.data_path(c.train).exists() for c in ws.config.clients.values()) and ws.config.clients:
        return collect_labels(ws)
    return ws.labels()  # the error that says how to make one


def collect_labels(ws: Workspace) -> list[str]:
    """Write labels.json from every configured client's training data (all must be readable here).

    An existing labels.json is never silently replaced: an invalid one is refused (it names the
    problem and stays as it is), one that lists other labels than the data is refused too (remove it to
    rebuild it), one that already says the same is left untouched."""
    # lazy: torch (~3 s)
    from fedbip_cli.client.tasks import make_task

    ws.check_writes(ws.labels_path)
    existing = read_label_map(ws.labels_path) if ws.labels_path.exists() else None
    reader = make_task(ws.config)
    found = []
    for cc in ws.config.clients.values():
        found += reader.read_labels(ws.data_path(cc.train))
    task = ws.config.task
    labels = list(task.labels) if task.labels else sort_labels(found)
    if existing == labels:
        return labels
    if existing is not None:
        raise UserError(f"{ws.labels_path}: already holds another label map ({', '.join(existing[:10])}) than the "
                        f"training files give ({', '.join(labels[:10])}); left as it is: remove it to rebuild it")
    write_label_map(ws.labels_path, labels)
    return labels


def make_initial(ws: Workspace, runtime: SiteRuntime | None = None, force: bool = False) -> Path:
    """The shared round-0 adapter: seeded LoRA A, zero B, seeded head. Same bytes at every site.

    A client with its own LoRA rank or alpha (clients.<name>.lora_r / lora_alpha) gets its round-0
    start at its own rank in rounds/0000/start/<client>/, made the same way.
    """
    own = [c for c in ws.config.clients if ws.config.for_client(c) is not ws.config]
    todo: list[tuple[str | None, Path]] = [(None, ws.initial_dir)] + [(c, ws.start_dir(0, c)) for c in own]
    todo = [(c, d) for c, d in todo if force or not d.is_dir()]
    if not todo:
        return ws.initial_dir
    ws.check_writes(folders=[d for _, d in todo])
    rt = runtime or SiteRuntime(ws)
    for client, folder in todo:
        model = rt.model if client is None else rt.model_for(client)
        model.reset_to_initial()
        model.save(folder, extra_files={CARD_FILE: site_card(ws, "initial", 0, client)})
    return ws.initial_dir


def finetune(ws: Workspace, client: str, t: int, *, runtime: SiteRuntime | None = None, force: bool = False,
             on_step: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Fine-tune `client`'s start adapter of round t on its training data; writes rounds/t/trained/<client>."""
    ws.client(client)
    out = ws.trained_dir(t, client)
    ws.check_writes(ws.manifest_path(t), folders=[ws.round_dir(t), out])
    read_manifest(ws.round_dir(t))  # a manifest that cannot record this step is refused before the training
    rt = runtime or SiteRuntime(ws)
    if t == 0 and not ws.start_dir(0, client).is_dir():
        make_initial(ws, rt)
    start = ws.resolve_start(t, client, site=True)
    start_sha = sha256_file(read_adapter(start).weights_path)
    info_path = out / TRAINING_INFO
    if info_path.is_file() and not force:
        info = read_json(info_path)
        if (isinstance(info, dict) and info.get("start_sha256") == start_sha
                and info.get("proximal", 0.0) == site_proximal(ws) and trained_intact(ws, t, client)):
            return info | {"skipped": True}
    with step_lock(ws.round_dir(t), f"finetune-{client}"):
        return _finetune(ws, rt, client, t, start, start_sha, out, on_step)


def trained_intact(ws: Workspace, t: int, client: str) -> bool:
    """Whether `client`'s trained adapter of round t is there, readable, and (when the manifest records
    it) unchanged since finetune wrote it: only then may a rerun skip the training."""
    try:
        read_adapter(ws.trained_dir(t, client))
        entry = read_manifest(ws.round_dir(t)).get("steps", {}).get(f"finetune/{client}")
        return entry is None or not check_step(ws.round_dir(t), f"finetune/{client}", entry)
    except UserError:
        return False


def site_proximal(ws: Workspace) -> float:
    """mu of the proximal pull towards the start adapter that the configured strategy asks of a site (fedamp)."""
    return ws.config.aggregation.make_strategy().site_proximal()


def _finetune(ws: Workspace, rt: SiteRuntime, client: str, t: int, start: Path, start_sha: str, out: Path,
              on_step: Callable[[int, int, float], None] | None) -> dict[str, Any]:
    data = rt.split(client, "train")
    tc = ws.config.training
    seed = stable_seed(tc.seed, client, t)
    model = rt.model_for(client)
    model.load(start)
    t0 = time.perf_counter()
    # lazy: torch (~3 s)
    from fedbip_cli.client.train import train

    proximal = site_proximal(ws)
    result = train(model, data, tc, seed, rt.pad_id, freeze_a=ws.config.lora.freeze_a, on_step=on_step,
                   proximal=proximal)
    info = {"client": client, "round": t, "start": ws.relative(start), "start_sha256": start_sha,
            "num_examples": len(data), "steps": result.steps, "examples_seen": result.examples,
            "final_loss": result.final_loss, "mean_loss": result.mean_loss, "seconds": round(result.seconds, 3),
            "examples_per_second": round(result.examples_per_second, 2), "seed": seed}
    if proximal:
        info["proximal"] = proximal
    model.save(out, extra_files={TRAINING_INFO: json.dumps(info, indent=2) + "\n",
                                 CARD_FILE: site_card(ws, "trained", t, client, info)})
    record_step(ws.round_dir(t), f"finetune/{client}",
                inputs={"start": start / "adapter_model.safetensors", "start_config": start / CONFIG_FILE},
                outputs={"trained": out}, config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0)
    return info


def _taskvec_done(ws: Workspace, t: int, client: str, space: str) -> bool:
    """Whether the task vector was written in `space` from the start and trained adapters as they are now
    (the manifest's record intact): then rerunning would only rewrite it (or, with privacy noise, change it)."""
    entry = read_manifest(ws.round_dir(t)).get("steps", {}).get(f"taskvec/{client}")
    return (entry is not None and entry.get("space") == space
            and not check_step(ws.round_dir(t), f"taskvec/{client}", entry))


def taskvec(ws: Workspace, client: str, t: int, *, space: str | None = None, force: bool = False) -> Path:
    """tau = trained - start for `client` in round t; writes rounds/t/deltas/<client>.safetensors.

    Already written from the same adapters (manifest intact), it is left as it is unless `force`.

    `space`: factor (elementwise differences of A, B, head) or delta (exact low-rank factors of the
    weight change, see core.taskvec); default aggregation.space of the config.
    """
    ws.client(client)
    space = ws.config.aggregation.resolve_space(space)
    t0 = time.perf_counter()
    start = read_adapter(ws.resolve_start(t, client, site=True))
    trained_dir = ws.trained_dir(t, client)
    if not trained_dir.is_dir():
        raise UserError(f"{trained_dir}: {client!r} has not been fine-tuned in round {t} yet "
                        f"(run `fedbip finetune --client {client} --round {t}` first)")
    trained = read_adapter(trained_dir)
    info = read_json(trained_dir / TRAINING_INFO)
    start_sha = sha256_file(start.weights_path)
    if not isinstance(info, dict) or info.get("start_sha256") != start_sha:
        raise UserError(f"{trained_dir}: was trained from another start adapter than {start.folder} "
                        f"(rerun `fedbip finetune --client {client} --round {t}`)")
    out = ws.taskvec_path(t, client)
    if out.is_file() and not force and _taskvec_done(ws, t, client, space):
        return out
    dp = ws.config.privacy
    ws.check_writes(out, ws.manifest_path(t))
    read_manifest(ws.round_dir(t))  # a manifest that cannot record this step is refused before the vector is written
    if dp.enabled:
        ws.check_writes(ledger_path(ws.root, client))
    meta = TaskVectorMeta(client=client, round=t, space=space,
                          base_fingerprint=base_fingerprint(ws.config),
                          start_sha256=start_sha,
                          num_examples=released_examples(ws, client, info, trained_dir / TRAINING_INFO),
                          lora_config=start.lora_signature())
    write_taskvec(start, trained, out, meta)
    extra = {"privacy": release_privately(ws, client, t, out, start.scale)} if dp.enabled else {}
    record_step(ws.round_dir(t), f"taskvec/{client}",
                inputs={"start": start.weights_path, "start_config": start.folder / CONFIG_FILE,
                        "trained": trained.weights_path},
                outputs={"taskvec": out}, config_sha256=ws.config_sha256(), seconds=time.perf_counter() - t0,
                extra={"space": space, **extra})
    return out


def released_examples(ws: Workspace, client: str, info: dict[str, Any], source: Path) -> int:
    """The num_examples a task vector carries: the count trained on; under differential privacy, never
    that count (it would leave the site unnoised) but the site's public clients.<name>.max_examples, or 1."""
    if ws.config.privacy.enabled:
        return ws.config.clients[client].max_examples or 1
    n = info.get("num_examples")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UserError(f"{source}: num_examples must be a positive integer, got {n!r}")
    return n


def release_privately(ws: Workspace, client: str, t: int, out: Path, scale_of: Callable[[str], float]) -> dict:
    """Clip and noise the task vector at `out` (core.site.privacy), count the release in the site's ledger
    (every release, reruns included) and return what the manifest may record: settings and (eps, delta)
    spent, nothing computed from the unnoised update."""
    dp = ws.config.privacy
    privatize(out, dp.clip_norm, dp.noise_multiplier, scale_of=scale_of)
    rho = release_rho(dp.noise_multiplier)
    ledger = ledger_path(ws.root, client)
    atomic.append_line(ledger, json.dumps({"round": t, "rho": rho, "noise_multiplier": dp.noise_multiplier,
                                           "clip_norm": dp.clip_norm, "taskvec_sha256": sha256_file(out),
                                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    rhos = ledger_rhos(ledger)
    return {"clip_norm": dp.clip_norm, "noise_multiplier": dp.noise_multiplier, "delta": dp.delta,
            "neighbouring": "any two data sets of the site (sensitivity 2 x clip_norm)",
            "rho_this_release": rho, "releases": len(rhos), "rho_total": sum(rhos), "ledger": str(ledger),
            "epsilon_this_release": zcdp_epsilon(rho, dp.delta),
            "epsilon_cumulative": zcdp_epsilon(sum(rhos), dp.delta)}


def ledger_rhos(ledger: Path) -> list[float]:
    """The zCDP cost of every release recorded in a site's privacy ledger."""
    rhos = []
    for i, line in enumerate(read_text(ledger).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rho = json.loads(line)["rho"]
            if not isinstance(rho, (int, float)) or not rho > 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise UserError(f"{ledger}:{i}: malformed privacy ledger line (needs a positive 'rho')") from None
        rhos.append(float(rho))
    return rhos


def evaluate(ws: Workspace, client: str, t: int, *, adapter: Path | None = None, split: str = "test",
             runtime: SiteRuntime | None = None, log: bool = True) -> dict[str, Any]:
    """Metrics of an adapter (default: the one `client` holds for round t) on the client's held-out split."""
    ws.client(client)
    if log:
        ws.check_writes(ws.metrics_path)
    rt = runtime or SiteRuntime(ws)
    folder = Path(adapter) if adapter is not None else ws.resolve_start(t, client, site=True)
    data = rt.split(client, split)
    model = rt.model_for(client)
    model.load(folder)
    metrics = rt.task.evaluate(model, data, rt.pad_id)
    # "round" is the round folder whose start adapter was evaluated; "after_round" the aggregation that
    # made it (t - 1; None for round 0's shared initial adapter): the round that simulate's tables,
    # plots and evaluation.json's "round" count in (docs/pipeline.md, "Round numbers")
    record = {"client": client, "round": t, "split": split, "after_round": t - 1 if t > 0 else None,
              "adapter": ws.relative(folder), **metrics,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if log:
        log_evaluation(ws, record)
    return record


def log_evaluation(ws: Workspace, record: dict[str, Any]) -> None:
    """Append an `evaluate` record to the workspace's metrics.jsonl (simulate logs records that it computed
    with log=False on another thread, in its own order)."""
    atomic.append_line(ws.metrics_path, json.dumps(record))


def init_workspace(root: str | Path, *, model_path: str | None = None, labels: list[str] | None = None,
                   clients: dict[str, dict] | None = None, settings: dict[str, Any] | None = None,
                   force: bool = False) -> Path:
    """Create a workspace folder with a commented fedbip.yaml and the rounds/ layout.

    `settings` sets further keys by path ({"training.epochs": 2}) in the commented template.
    """
    root = Path(root)
    cfg_path = root / WORKSPACE_CONFIG
    if cfg_path.exists() and not force:
        raise UserError(f"{cfg_path}: already exists (use --force to overwrite)")
    text = render(model_path, labels, clients, settings)
    parse_config(yaml.safe_load(text), str(cfg_path))  # the template must always be valid
    (root / "rounds").mkdir(parents=True, exist_ok=True)
    atomic.write_text(cfg_path, text)
    return cfg_path
