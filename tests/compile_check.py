"""Shared by the tests that hold a function to `torch.compile(fullgraph=True)`: the eager result
and the compiled one of the same call, with dynamo's caches cleared around it (so an earlier
test's graphs are not reused and this one's are not left behind)."""

from __future__ import annotations

import torch


def eager_and_compiled(run, fn, backend: str = "aot_eager"):
    """(run(fn), run(torch.compile(fn, fullgraph=True, backend=backend)))."""
    torch._dynamo.reset()
    try:
        return run(fn), run(torch.compile(fn, fullgraph=True, backend=backend))
    finally:
        torch._dynamo.reset()
