"""BLAS threading for the coordinator: one thread per call.

The coordinator's products are many small ones (K x n by n x K, K x K by K x n with K up to a few
hundred, QRs and SVDs of a few hundred columns). On the 2-core machines fedbip targets, OpenBLAS's
multi-threaded versions of these were measured 2-100x slower than single-threaded (threads spin on
each other, worse when another process holds a core), so the coordinator runs BLAS on one thread and
overlaps its own work (reads, hashing, writes, modules) on others instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS/LAPACK to one thread inside the block (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
