"""Benchmarks as importable functions that return rows of numbers; `atss bench ...` renders them."""
