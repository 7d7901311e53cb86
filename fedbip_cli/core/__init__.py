"""The numpy core, shared by the coordinator and the sites: pure numpy over files. Imports neither torch,
transformers nor peft (tests enforce it), so the coordinator runs without a deep-learning stack.

Rooms, each depending only on those listed before it: files/ (formats and plumbing), strategies/
(similarity, weights and one file per aggregation strategy), engine/ (a round's aggregation, at the
coordinator), site/ (pure functions a site applies to its own update before it leaves: privacy, TAP's
gate)."""
