"""The order of training examples in an epoch, for every task type: shuffled, and where the task's
examples have lengths (token sequences), grouped by length.

Grouping similar lengths into the same batch, with each batch padded only to its own longest example,
is most of the speed-up over a fixed-length Trainer run on short and mixed-length texts.
"""

from __future__ import annotations

import random
from typing import Sequence


def train_order(n: int, batch_size: int, rng: random.Random, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """One epoch of batches of example indices 0..n-1: shuffled; with `lengths`, sorted by length within
    chunks of 16 batches; then the batches shuffled."""
    order = list(range(n))
    rng.shuffle(order)
    if lengths is not None:
        chunk = batch_size * 16
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda j: lengths[j], reverse=True)]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
