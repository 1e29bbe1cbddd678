"""Benchmarks as importable functions that return rows of numbers; `atss bench ...` renders them."""

import platform


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what a benchmark row was measured on)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
