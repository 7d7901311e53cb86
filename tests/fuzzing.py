"""Hypothesis settings for the fuzz tests (issue 15): derandomized (the same inputs every run, so a
failure reproduces and no run is flaky), no deadline (the machine is shared), no example database
written into the tree. `fuzz(n)` runs n generated inputs; FEDBIP_FUZZ_SCALE multiplies every n (e.g. 10
for a long local hunt, with FEDBIP_FUZZ_RANDOM=1 for fresh random inputs)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("FEDBIP_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("FEDBIP_FUZZ_RANDOM") == "1"


def fuzz(n: int) -> settings:
    """Settings for a fuzz test of n generated inputs."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def one_line(error: BaseException) -> None:
    """A UserError the CLI prints as one line: non-empty, no line break."""
    text = str(error)
    assert text and "\n" not in text and "\r" not in text, repr(text)
