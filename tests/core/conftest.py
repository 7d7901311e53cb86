"""The core tier: fedbip_cli.core is numpy over files, so its tests must not load torch, transformers or peft."""

from __future__ import annotations

import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "peft")
HERE = Path(__file__).resolve().parent


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail a run of only the core tier (`make test-fast`) that loaded a heavy library: a core module or
    core test that imports the client side. (A whole-suite run loads them for the other tiers.)"""
    items = getattr(session, "items", [])
    only_core = items and all(HERE in Path(str(i.fspath)).resolve().parents for i in items)
    loaded = [m for m in HEAVY if m in sys.modules]
    if only_core and loaded and exitstatus == 0:
        print(f"\ncore tier loaded {', '.join(loaded)}: core tests must stay numpy-only", file=sys.stderr)
        session.exitstatus = 1
