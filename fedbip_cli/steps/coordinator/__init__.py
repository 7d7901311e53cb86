"""The coordinator's steps on a round's files, one module per step; imports no torch, transformers or
peft (numpy and the files are all it needs).

- `inputs`: which task vectors arrived (`arrived_vectors`), where from (`resolve_inputs`), and the checks
  before anything is computed (`load_round`, `refuse_replays`);
- `grams`: the Gram matrices both steps look at, from a hashed pass over the files or as `similarity`
  saved them;
- `similarity`: pairwise cosines, similarity.json/.csv/.png;
- `aggregate`: personalized adapters for the next round, weights.json (`Aggregation`: load → Grams →
  clip → weights → write → record);
- `final_round`: once a round's adapters exist, changed inputs never rewrite them silently.

The CLI, simulate and the Flower strategy call `similarity` and `aggregate` from here.
"""

from fedbip_cli.steps.coordinator.aggregate import (
    AggregateResult,
    aggregate,
    strategy_from_config,
)
from fedbip_cli.steps.coordinator.similarity import SimilarityResult, similarity

__all__ = ["AggregateResult", "SimilarityResult", "aggregate", "similarity", "strategy_from_config"]
