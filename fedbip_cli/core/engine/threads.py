"""Threading settings for the coordinator's engines: one BLAS thread per call, quick GIL hand-overs.

BLAS. The coordinator's products are many small ones (K x n by n x K, K x K by K x n with K up to a few
hundred, QRs and SVDs of a few hundred columns). On the 2-core machines fedbip targets, OpenBLAS's
multi-threaded versions of these were measured 2-100x slower than single-threaded (threads spin on
each other, worse when another process holds a core), so the coordinator runs BLAS on one thread and
overlaps its own work (reads, hashing, writes, modules) on others instead.

GIL. The engines write outputs on the main thread (thousands of small write calls) while workers factor
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
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS/LAPACK to one thread inside the block (no-op without threadpoolctl)."""
    try:
        # optional at run time: without threadpoolctl the block runs unlimited
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextmanager
def fast_gil_handoff(interval: float = 1e-4) -> Iterator[None]:
    """Set the interpreter's switch interval to `interval` seconds inside the block."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
