"""The Flower ClientApp of a fedbip site: fedbip's own finetune, taskvec and evaluate on the site's workspace,
for every task type (each reports its registry metrics, workspace/task_types.py: text and image
classification accuracy, macro-F1 and loss; causal-lm exact match, token F1 and response loss). One
process loads the base model once for all the sites it serves.

Which site a SuperNode is comes from its node config, never from Flower's node id:

    flower-supernode ... --node-config "site='hospital_a' workspace='/srv/fedbip/hospital_a'"

On the simulation runtime the virtual nodes only carry `partition-id`; virtual node i is then the
i-th name of the run config's `sim-sites`, with its workspace at `<sim-root>/<site>`.

Every adapter the coordinator sends is written into the site's workspace (`rounds/T/start/<site>/`)
before use, so the site's folder holds the same files as a file-pipeline site and the fedbip
commands can take over (or inspect) at any round.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedbip_cli.errors import UserError
from fedbip_cli.flower.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    ROUND,
    SITE,
    TASKVEC_META,
    WANT_INITIAL,
    adapter_to_record,
    eval_keys,
    record_to_adapter,
    scalar,
    taskvec_to_record,
)
from fedbip_cli.steps.site import (
    SiteRuntime,
    evaluate,
    finetune,
    make_initial,
    released_examples,
    taskvec,
)
from fedbip_cli.workspace.layout import Workspace

_RUNTIMES: dict[tuple[str, str | None], SiteRuntime] = {}
"""Prepared data per workspace (and config version), kept between messages of a process; the model
itself is the process's shared one (client.session.shared_client_model): one base for all sites."""
_BUSY = threading.Lock()
"""The shared model holds one adapter at a time: messages of one process are handled one by one."""


def site_of(context: Context, defaults: Mapping[str, Any] | None = None) -> tuple[str, Path]:
    """(site name, workspace folder) from the node config, or on simulation from `partition-id`."""
    node = context.node_config
    if "site" in node:
        if "workspace" not in node:
            raise UserError(f"--node-config: sets site={node['site']!r} but no workspace='/path/to/site/workspace'")
        return str(node["site"]), Path(str(node["workspace"])).expanduser()
    if "partition-id" in node:
        cfg = {**(defaults or {}), **context.run_config}
        sites = [s.strip() for s in str(cfg.get("sim-sites", "")).split(",") if s.strip()]
        pid = int(node["partition-id"])
        if pid >= len(sites) or "sim-root" not in cfg:
            raise UserError(f"run config: simulated node {pid} has no site: set sim-sites (a comma-separated list "
                            f"with one name per virtual node, have {len(sites)}) and sim-root")
        return sites[pid], Path(str(cfg["sim-root"])).expanduser() / sites[pid]
    raise UserError("--node-config: must set site='NAME' and workspace='/path/to/site/workspace'")


def open_site(context: Context, defaults: Mapping[str, Any] | None = None) -> tuple[Workspace, str, SiteRuntime]:
    """The site's workspace (checked to list the site) and its cached runtime."""
    site, root = site_of(context, defaults)
    ws = Workspace.open(root)
    ws.client(site)
    key = (str(root.resolve()), ws.config_sha256())
    if key not in _RUNTIMES:
        # lazy: torch (~3 s), on a node's first message
        from fedbip_cli.client.session import shared_client_model

        rt = SiteRuntime(ws)
        _RUNTIMES[key] = SiteRuntime(ws, _model=shared_client_model(ws.config, len(rt.labels), rt.task),
                                     _task=rt.task)
    rt = _RUNTIMES[key]
    rt.model.cfg = rt.ws.config  # the shared model saves adapters naming this site's model.path
    return rt.ws, site, rt


def _round_of(msg: Message, site: str) -> int:
    cfg = msg.content.config_records[CONFIG]
    if str(cfg[SITE]) != site:
        raise UserError(f"message for site {cfg[SITE]!r} reached site {site!r}")
    return int(scalar(cfg, ROUND))


def handle_query(msg: Message, context: Context, defaults: Mapping[str, Any] | None = None) -> Message:
    """Say which site this node is; on round 0 also send the seeded initial adapter."""
    ws, site, rt = open_site(context, defaults)
    if not msg.content.config_records[CONFIG].get(WANT_INITIAL):
        return Message(RecordDict({CONFIG: ConfigRecord({SITE: site})}), reply_to=msg)
    arrays, meta = adapter_to_record(make_initial(ws, rt))
    return Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({SITE: site, **meta})}), reply_to=msg)


def handle_train(msg: Message, context: Context, defaults: Mapping[str, Any] | None = None) -> Message:
    """Store the start adapter, fine-tune it, reply with the task vector (trained adapter stays here)."""
    ws, site, rt = open_site(context, defaults)
    t = _round_of(msg, site)
    record_to_adapter(msg.content.array_records[ARRAYS], msg.content.config_records[CONFIG], ws.start_dir(t, site))
    info = finetune(ws, site, t, runtime=rt)
    arrays, meta = taskvec_to_record(taskvec(ws, site, t))
    if ws.config.privacy.enabled:  # nothing computed from the site's data leaves it unnoised
        metrics = MetricRecord({"num-examples": released_examples(ws, site, info, ws.trained_dir(t, site))})
    else:
        metrics = MetricRecord({"num-examples": int(info["num_examples"]),
                                "train-loss": float(info.get("mean_loss") or 0.0)})
    return Message(RecordDict({ARRAYS: arrays, METRICS: metrics,
                               CONFIG: ConfigRecord({SITE: site, ROUND: t, TASKVEC_META: meta})}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, defaults: Mapping[str, Any] | None = None) -> Message:
    """Store the site's new adapter as its next start and evaluate it on the site's test split."""
    ws, site, rt = open_site(context, defaults)
    t = _round_of(msg, site)
    record_to_adapter(msg.content.array_records[ARRAYS], msg.content.config_records[CONFIG], ws.start_dir(t, site))
    keys = eval_keys(ws.config.task.type)  # the task type's scores, the same for every site
    values: dict[str, int | float | list[int] | list[float]] = {"num-examples": 0, **{k: 0.0 for k in keys}}
    if ws.client(site).test is not None:
        rec = evaluate(ws, site, t, runtime=rt)  # logged at the site; under DP its figures stay there
    if ws.client(site).test is not None and not ws.config.privacy.enabled:
        values = {"num-examples": int(rec["examples"]), **{k: float(rec[k.replace("-", "_")]) for k in keys}}
    return Message(RecordDict({METRICS: MetricRecord(values), CONFIG: ConfigRecord({SITE: site, ROUND: t})}),
                   reply_to=msg)


def one_at_a_time(handler: Any, msg: Message, context: Context, defaults: Mapping[str, Any]) -> Message:
    """Run a handler holding the process's lock (module level: Ray pickles the app's closures, not locks)."""
    with _BUSY:
        return handler(msg, context, defaults)


def make_client_app(**defaults: Any) -> ClientApp:
    """A ClientApp; `defaults` stand in for run-config keys (`sim-root`, `sim-sites`) that the run
    config does not set, e.g. under `flwr.simulation.run_simulation`, which passes none."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return one_at_a_time(handle_query, msg, context, defaults)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return one_at_a_time(handle_train, msg, context, defaults)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return one_at_a_time(handle_evaluate, msg, context, defaults)

    return app


app = make_client_app()
