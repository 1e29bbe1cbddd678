"""Benchmarks as importable functions that return rows of numbers; `atss bench ...` renders them."""

from atss_cli.environment import cpu_name  # noqa: F401 - the name bench/driver_common.py imports
