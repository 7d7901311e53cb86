"""Text classification: JSONL/CSV data, tokenized batches, the pooled encoder + head model, metrics."""
