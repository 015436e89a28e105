"""Benchmarks and reliability tooling (kill-safety harness, synthetic large datasets, detection benchmarks)."""
