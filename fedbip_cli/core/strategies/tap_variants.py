"""TAP's client stages (docs/tap.md, fedbip_cli.steps.tap) on top of a coordinator strategy: `tap` runs
them on fedavg (as TAP's authors do), `fedbip-tap` on fedbip. The coordinator's side is unchanged."""

from __future__ import annotations

from fedbip_cli.core.strategies.fedavg import FedAvg
from fedbip_cli.core.strategies.fedbip import FedBip


class Tap(FedAvg):
    name = "tap"
    summary = "fedavg at the coordinator; each client gates the received adapter and distils (TAP)"
    after_receive = "tap"


class FedBipTap(FedBip):
    name = "fedbip-tap"
    summary = "fedbip at the coordinator; each client gates the received adapter and distils (TAP)"
    after_receive = "tap"
