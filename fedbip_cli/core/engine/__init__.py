"""The aggregation engine: reads a round's task vectors once, computes Grams and per-client mixes in
factor or delta space, handles mixed ranks and clipping, and streams the adapters out. numpy only."""
