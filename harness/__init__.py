"""Harnesses shared by the acceptance tests and the benchmarks (not part of the package)."""
