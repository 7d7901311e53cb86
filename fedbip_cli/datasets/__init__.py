"""Offline corpora that ship in packages, for the demo, benchmarks and smoke tests."""
