"""Whole federations in one process: partitioning a corpus into clients, `simulate` over strategies
and rounds, the packaged demo, and the report (tables, plots, report.md)."""
