"""A Flower strategy that keeps one adapter per site and aggregates with fedbip's own coordinator.

Flower's stock strategies send one model to every node and average what comes back. FedBip gives
each site its own adapter, so this strategy (a FedAvg subclass, for its sampling, reply checks and
metric averaging) differs in three places:

- sites, not node ids: before the first round it asks every new node, by a `query` message, which
  site it is (the SuperNode's node config names it); unknown sites are left out;
- configure_train / configure_evaluate build one message per node carrying that site's adapter,
  resolved by the workspace's own rule (`Workspace.resolve_start`: own adapter, else the round's
  global one for a late joiner, else the shared initial adapter);
- aggregate_train writes the received task vectors into `rounds/T/deltas/` of a coordinator
  workspace and calls `coordinator.similarity` and `coordinator.aggregate`, which write similarity,
  weights, manifest and the next round's adapters exactly as `fedbip aggregate` does.

The fedbip round advances only when a round was aggregated, so Flower round k runs fedbip round
`first_round + (aggregated rounds so far)`; a run started on a workspace that already holds rounds
continues from its latest one (`next_round`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from importlib.metadata import version
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedbip_cli import __version__
from fedbip_cli.core.files import atomic
from fedbip_cli.core.files.manifest import record_step
from fedbip_cli.errors import UserError
from fedbip_cli.flower.records import (
    ADAPTER_SHA256,
    ARRAYS,
    CONFIG,
    METRICS,
    ROUND,
    SITE,
    TASKVEC_META,
    WANT_INITIAL,
    adapter_to_record,
    arrays_of,
    numpy_of,
    record_to_adapter,
    record_to_taskvec,
    scalar,
)
from fedbip_cli.steps.coordinator import aggregate, similarity, strategy_from_config
from fedbip_cli.workspace.layout import Workspace


def next_round(ws: Workspace) -> int:
    """The fedbip round a run on this workspace starts with: the latest one that has start adapters
    (its aggregation is not done, or round T+1 would exist), else 0."""
    t = ws.latest_round()
    while t is not None and t > 0:
        if (ws.round_dir(t) / "start").is_dir() or ws.global_dir(t).is_dir():
            return t
        t -= 1
    return 0


class FedBipStrategy(FedAvg):
    """Personalized adapters per site; aggregation by `fedbip_cli.steps.coordinator` on a workspace.

    >>> strategy = FedBipStrategy(Workspace.open("federation"), strategy="fedbip", min_clients=2)
    >>> strategy.start(grid, initial_arrays=strategy.prepare(grid), num_rounds=5)
    """

    def __init__(self, ws: Workspace, *, strategy: str | None = None, min_clients: int = 2,
                 fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_available_nodes: int = 2,
                 first_round: int | None = None, timeout: float = 3600.0, plot: bool = True) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_clients, min_evaluate_nodes=0, min_available_nodes=min_available_nodes)
        self.ws = ws
        self.fedbip = strategy_from_config(ws, strategy)  # unknown names fail here, before any node is asked
        self.min_clients = min_clients
        self.round = next_round(ws) if first_round is None else first_round
        self.timeout = timeout
        self.plot = plot
        self.sites: dict[int, str] = {}  # node id -> site name, as each node told us
        self._ignored: set[int] = set()
        self._aggregated: int | None = None  # fedbip round aggregated in the current Flower round
        self._initial_from: str | None = None  # the site whose initial adapter the coordinator kept

    def summary(self) -> None:
        log(INFO, "\t├──> fedbip: strategy %s %s, workspace %s", self.fedbip.name, self.fedbip.options(),
            self.ws.root)
        log(INFO, "\t├──> fedbip: first round %d, at least %d sites per round", self.round, self.min_clients)
        super().summary()

    # --- sites -------------------------------------------------------------------------------
    def discover(self, grid: Grid) -> dict[int, str]:
        """Ask every node not yet known which site it is; on round 0 also collect the initial adapter."""
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)  # waits for min_available_nodes
        new = [n for n in nodes if n not in self.sites and n not in self._ignored]
        if not new:
            return self.sites
        want = self.round == 0 and not self.ws.initial_dir.is_dir()
        query = [Message(RecordDict({CONFIG: ConfigRecord({WANT_INITIAL: want, "fedbip-version": __version__})}),
                         dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        replies = [r for r in grid.send_and_receive(query, timeout=self.timeout) if not _failed(r, "query")]
        connected = set(nodes)
        for reply in replies:
            node, site = reply.metadata.src_node_id, str(reply.content.config_records[CONFIG][SITE])
            if site not in self.ws.config.clients:
                log(WARNING, "node %d says it is site %r, which %s does not list: left out", node, site,
                    self.ws.config_path)
                self._ignored.add(node)
                continue
            for other, name in list(self.sites.items()):
                if name == site and other in connected:
                    raise UserError(f"nodes {other} and {node} both say they are site {site!r}: "
                                    f"give each SuperNode its own `site` in --node-config")
                if name == site:
                    del self.sites[other]  # the site reconnected under a new node id
            self.sites[node] = site
            if want and ARRAYS in reply.content:
                self._take_initial(site, reply.content.array_records[ARRAYS], reply.content.config_records[CONFIG])
        named = sorted((s, n) for n, s in self.sites.items())
        log(INFO, "fedbip sites: %s", ", ".join(f"{s} (node {n})" for s, n in named))
        return self.sites

    def _take_initial(self, site: str, arrays: ArrayRecord, meta: ConfigRecord) -> None:
        """Keep the first site's initial adapter; every other site's must be the same tensors."""
        if not self.ws.initial_dir.is_dir():
            # the site's own file was written by peft; the sha256 check is for the canonical copies from here on
            record_to_adapter(arrays, {k: v for k, v in meta.items() if k != ADAPTER_SHA256}, self.ws.initial_dir)
            self._initial_from = site
            return
        mine = numpy_of(arrays_of(self.ws.initial_dir))
        theirs = numpy_of(arrays)
        if set(mine) != set(theirs) or any(not np.array_equal(mine[k], theirs[k]) for k in mine):
            raise UserError(f"site {site!r}: its initial adapter differs from site {self._initial_from!r}'s: "
                            f"the sites' fedbip.yaml disagree on model, labels or lora settings")

    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        known = sorted(self.discover(grid))
        size = min(len(known), max(int(len(known) * fraction), minimum))
        return sorted(random.sample(known, size))

    def _messages(self, nodes: list[int], t: int, config: ConfigRecord, server_round: int,
                  kind: str) -> list[Message]:
        """One message per node, each with its own site's adapter for fedbip round t."""
        out = []
        for node in nodes:
            site = self.sites[node]
            arrays, meta = adapter_to_record(self.ws.resolve_start(t, site))
            cfg = ConfigRecord({**config, **meta, "server-round": server_round, ROUND: t, SITE: site})
            out.append(Message(RecordDict({ARRAYS: arrays, CONFIG: cfg}), dst_node_id=node, message_type=kind))
        return out

    # --- training ----------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._aggregated = None
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        log(INFO, "configure_train: fedbip round %d, sites %s", self.round, [self.sites[n] for n in nodes])
        return self._messages(nodes, self.round, config, server_round, MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Task vectors -> rounds/T/deltas/, then fedbip's own similarity and aggregate on the workspace."""
        t0 = time.perf_counter()
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        t = self.round
        received: dict[str, Path] = {}
        used = []
        for msg in valid:
            node, cfg = msg.metadata.src_node_id, msg.content.config_records[CONFIG]
            site = str(cfg[SITE])
            if self.sites.get(node) != site or int(scalar(cfg, ROUND)) != t:
                log(WARNING, "reply from node %d (site %r, round %s) does not match what was sent: left out",
                    node, site, cfg[ROUND])
                continue
            try:
                received[site] = record_to_taskvec(msg.content.array_records[ARRAYS], str(cfg[TASKVEC_META]),
                                                   self.ws.taskvec_path(t, site))
            except UserError as e:  # one site's malformed reply does not stop the round
                log(WARNING, "reply from node %d (site %r) refused: %s", node, site, e)
                continue
            used.append(msg.content)
        if len(received) < self.min_clients:
            log(WARNING, "fedbip round %d: %d task vector(s), %d needed: not aggregated; the round runs again",
                t, len(received), self.min_clients)
            return None, None
        nodes = {s: n for n, s in self.sites.items() if s in received}
        record_step(self.ws.round_dir(t), "flower", inputs=received, outputs={}, config_sha256=self.ws.config_sha256(),
                    seconds=time.perf_counter() - t0,
                    extra={"server_round": server_round, "nodes": nodes, "flwr_version": _flwr_version()})
        similarity(self.ws, t, plot=self.plot)
        result = aggregate(self.ws, t, strategy=self.fedbip, min_clients=self.min_clients)
        log(INFO, "fedbip round %d aggregated with %s: weights %s", t, result.strategy,
            np.array2string(result.weights, precision=3).replace("\n", ""))
        self._aggregated, self.round = t, t + 1
        arrays, _ = adapter_to_record(self.ws.global_dir(t + 1))
        return arrays, self.train_metrics_aggr_fn(used, self.weighted_by_key)

    # --- evaluation --------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Each site receives its new adapter (round T+1), keeps it as its next start and evaluates it."""
        if self.fraction_evaluate == 0.0 or self._aggregated is None:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        return self._messages(nodes, self.round, config, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean over sites that have test data; per-site lines go to metrics.jsonl."""
        valid, _ = self._check_and_log_replies(replies, is_train=False)
        for msg in valid:
            m, cfg = msg.content.metric_records[METRICS], msg.content.config_records[CONFIG]
            examples = int(scalar(m, self.weighted_by_key))
            line = {"client": str(cfg[SITE]), "round": int(scalar(cfg, ROUND)), "split": "test", "source": "flower",
                    "node_id": msg.metadata.src_node_id, "examples": examples,
                    **{k.replace("-", "_"): float(scalar(m, k)) for k in m if k != self.weighted_by_key},
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if examples > 0:
                atomic.append_line(self.ws.metrics_path, json.dumps(line))
        scored = [msg.content for msg in valid
                  if int(scalar(msg.content.metric_records[METRICS], self.weighted_by_key)) > 0]
        return self.evaluate_metrics_aggr_fn(scored, self.weighted_by_key) if scored else None

    def prepare(self, grid: Grid) -> ArrayRecord:
        """Discover the sites (and the initial adapter on round 0); the adapter to report as `initial_arrays`."""
        self.discover(grid)
        for folder in (self.ws.global_dir(self.round), self.ws.initial_dir):
            if folder.is_dir():
                return adapter_to_record(folder)[0]
        return ArrayRecord()


def _failed(reply: Message, what: str) -> bool:
    if reply.has_error():
        log(WARNING, "%s: node %d replied with an error: %s", what, reply.metadata.src_node_id, reply.error.reason)
        return True
    return False


def _flwr_version() -> str:
    return version("flwr")
