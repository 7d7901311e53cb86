"""Causal-LM instruction tuning: prompt/response pairs, response-only loss, greedy generation, EM/F1."""
