"""The coordinator's core: pure numpy over files. Imports neither torch, transformers nor peft.

Rooms, each depending only on those listed before it: files/ (formats and plumbing), strategies/
(similarity, weights and one file per aggregation strategy), engine/ (a round's aggregation), site/
(pure functions a site applies to its own update)."""
