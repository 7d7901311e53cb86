"""The Flower ServerApp of a fedbip coordinator: `FedBipStrategy` over a coordinator workspace.

Run config keys (pyproject.toml `[tool.flwr.app.config]`, or `flwr run --run-config`):

| key                 | meaning                                                                 |
|---------------------|-------------------------------------------------------------------------|
| `workspace`         | coordinator workspace folder (fedbip.yaml lists the sites)              |
| `num-server-rounds` | rounds to run in this Flower run (continuing from the workspace's last) |
| `strategy`          | fedbip strategy; "" = `aggregation.strategy` of fedbip.yaml             |
| `min-clients`       | task vectors needed to aggregate a round (fewer: the round runs again)  |
| `fraction-train`, `fraction-evaluate`, `min-available-nodes`, `timeout` | as in Flower's FedAvg |

The ServerApp imports neither torch nor transformers: the coordinator is numpy over files.
"""

from __future__ import annotations

from logging import ERROR
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedbip_cli.errors import UserError
from fedbip_cli.flower.strategy import FedBipStrategy
from fedbip_cli.workspace.layout import Workspace

DEFAULTS: dict[str, Any] = {"num-server-rounds": 2, "strategy": "", "min-clients": 2, "fraction-train": 1.0,
                            "fraction-evaluate": 1.0, "min-available-nodes": 2, "timeout": 3600.0, "plot": True}


def run_server(grid: Grid, context: Context, defaults: dict[str, Any] | None = None) -> FedBipStrategy:
    """Run `num-server-rounds` fedbip rounds on the grid; returns the strategy (its workspace holds the rounds)."""
    cfg = {**DEFAULTS, **(defaults or {}), **context.run_config}
    if not cfg.get("workspace"):
        raise UserError("run config: `workspace` (the coordinator workspace folder) is not set")
    ws = Workspace.open(str(cfg["workspace"]))
    strategy = FedBipStrategy(ws, strategy=str(cfg["strategy"]) or None, min_clients=int(cfg["min-clients"]),
                              fraction_train=float(cfg["fraction-train"]),
                              fraction_evaluate=float(cfg["fraction-evaluate"]),
                              min_available_nodes=int(cfg["min-available-nodes"]), timeout=float(cfg["timeout"]),
                              plot=bool(cfg["plot"]))
    initial = strategy.prepare(grid)
    strategy.start(grid, initial_arrays=initial, num_rounds=int(cfg["num-server-rounds"]),
                   timeout=float(cfg["timeout"]), train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    return strategy


def make_server_app(**defaults: Any) -> ServerApp:
    """A ServerApp; `defaults` stand in for run-config keys the run config does not set."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_server(grid, context, defaults)
        except UserError as e:  # one line in Flower's log before the run fails
            log(ERROR, "fedbip: %s", e)
            raise

    return app


app = make_server_app()
