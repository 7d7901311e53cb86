"""Helpers for tests, examples and benchmarks: synthetic task-vector rounds and tiny random models.
Shipped in the package so benchmarks and examples can build the same inputs as the tests."""
