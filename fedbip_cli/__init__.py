"""fedbip: bi-level personalized federated fine-tuning of foundation models (FedBip, AAAI-26).

The functions behind the CLI are importable here; heavy modules (torch, transformers, peft) load only
when a client-side function is first used, so `import fedbip_cli` stays light.

    >>> import fedbip_cli as fb
    >>> ws = fb.Workspace.open("federation")
    >>> fb.finetune(ws, "hospital_a", 0); fb.taskvec(ws, "hospital_a", 0)
    >>> fb.aggregate(ws, 0)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "Workspace": "fedbip_cli.workspace.layout",
    "Config": "fedbip_cli.workspace.config",
    "load_config": "fedbip_cli.workspace.config",
    "UserError": "fedbip_cli.errors",
    "init_workspace": "fedbip_cli.steps.site",
    "make_initial": "fedbip_cli.steps.site",
    "collect_labels": "fedbip_cli.steps.site",
    "finetune": "fedbip_cli.steps.site",
    "taskvec": "fedbip_cli.steps.site",
    "evaluate": "fedbip_cli.steps.site",
    "similarity": "fedbip_cli.steps.coordinator",
    "aggregate": "fedbip_cli.steps.coordinator",
    "STRATEGIES": "fedbip_cli.core.strategies",
    "simulate": "fedbip_cli.sim.simulate",
    "PartitionSpec": "fedbip_cli.sim.partition",
    "write_federation": "fedbip_cli.sim.partition",
    "run_demo": "fedbip_cli.sim.demo",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fedbip_cli' has no attribute {name!r}")
