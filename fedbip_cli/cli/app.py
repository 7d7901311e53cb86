"""The `fedbip` command: the typer app (cli/common.py) with its commands registered from one module per
side: site_commands (site steps), coordinator_commands (coordinator steps), sim_commands (whole
federations). Commands import their heavy modules inside the function body, so `fedbip --help` and the
coordinator commands never import torch, transformers or peft.
"""

from __future__ import annotations

import sys
from importlib import import_module

from fedbip_cli.cli.common import app

# Registration order is the order of `fedbip --help`: a round's life, site first.
COMMAND_MODULES = ("site_commands", "coordinator_commands", "ops_commands", "deploy_commands", "sim_commands")
for _module in COMMAND_MODULES:
    import_module(f"fedbip_cli.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    """`fedbip CMD ... --quiet` works as `fedbip --quiet CMD ...` (click reads app options before the command)."""

    if "--quiet" in sys.argv[2:]:
        sys.argv.remove("--quiet")
        sys.argv.insert(1, "--quiet")
    app()
