"""Quick GIL hand-overs while the coordinator's threads work together.

The engines write outputs on the main thread (thousands of small write calls) while workers factor
modules or hash bytes. Each write releases the GIL; getting it back from a busy worker waits for
Python's switch interval (5 ms by default), which was measured to stretch a delta-space aggregate's
writes from under a second to eight. A 0.1 ms interval keeps the writer's wait short; the workers
spend their time in numpy/hashlib calls that release the GIL anyway.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def fast_gil_handoff(interval: float = 1e-4) -> Iterator[None]:
    """Set the interpreter's switch interval to `interval` seconds inside the block."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
