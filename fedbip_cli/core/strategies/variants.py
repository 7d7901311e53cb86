"""Names accepted beside the coordinator's strategies: variants whose extra work happens at the client.

Their coordinator side is one of the registered strategies (`base`); `fedbip strategies` lists both
kinds from here and the registry, so the list, its JSON and the docs name the same set.
"""

from __future__ import annotations

CLIENT_VARIANTS: dict[str, dict[str, str]] = {
    "fedavg-ft": {"base": "fedavg",
                  "summary": "fedavg, then each client fine-tunes the global adapter before evaluation"},
    "tap": {"base": "fedavg",
            "summary": "fedavg with TAP's client stages: margin-gated acceptance each round, distillation after "
                       "the last (simulate; sites run `fedbip accept` / `fedbip distill`)"},
    "fedbip-tap": {"base": "fedbip", "summary": "fedbip with TAP's client stages (as tap)"},
}
