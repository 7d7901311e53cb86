"""A round's Gram matrices, with the sha256 of the task vector bytes they were computed from.

Both coordinator steps look at the task vectors only through these: `similarity` takes cosines of them
(and saves them, `core/files/gram_cache.py`), `aggregate` hands them to the strategy. Either comes from
a pass over the files (`read_grams`, hashing what it reads), or for `aggregate` from the saved ones
(`saved_grams`), a hint whose digests the output pass then proves from the bytes it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedbip_cli.core.engine.aggregate import round_stats
from fedbip_cli.core.engine.round_data import FileSource, RoundData
from fedbip_cli.core.files import gram_cache
from fedbip_cli.core.files.digest_cache import Digests
from fedbip_cli.core.strategies.base import RoundStats
from fedbip_cli.workspace.layout import Workspace


@dataclass(frozen=True)
class Grams:
    """The round's statistics for the strategies and where they came from."""

    stats: RoundStats
    sources: list[str | None]
    """Per client, the sha256 of the task vector bytes the Grams came from (None: a file the pass could
    not vouch for)."""
    saved: bool = False
    """Loaded from `similarity`'s Gram file rather than computed from this run's reads."""


def read_grams(data: RoundData, digests: Digests, need_model_gram: bool, space: str,
               scales: np.ndarray | None = None) -> Grams:
    """The round's Gram matrices from one pass over its files (task vectors times `scales`, when
    given), hashed from the pass's own reads."""
    hashes = digests.read_hashes(tv.header for tv in data.taskvecs)
    with FileSource(hashes) as source:
        stats = round_stats(data.reader(source), need_model_gram=need_model_gram, space=space, scales=scales)
    used = digests.finish_reading(hashes)
    return Grams(stats, [used[tv.path] for tv in data.taskvecs])


def saved_grams(ws: Workspace, t: int, data: RoundData, space: str, digests: Digests) -> Grams | None:
    """The round's task Gram matrices as `similarity` saved them, if they were computed from the
    digests the cache holds for the files now; None otherwise."""
    sha = [digests.cached(tv.path) for tv in data.taskvecs]
    grams = gram_cache.load_grams(ws.round_dir(t) / gram_cache.FILE, space, list(data.clients), sha)
    if grams is None:
        return None
    return Grams(RoundStats(list(data.clients), data.num_examples, grams), sha, saved=True)
