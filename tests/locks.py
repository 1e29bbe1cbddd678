"""Cross-process locks for the parts of the suite that pytest-xdist's workers could do at once:
installing system packages (dpkg takes one installer at a time and refuses a second), making the
tidecv venv in the shared cache, and the runs a session makes once (tests/conftest.py).

`exclusive(name)` holds an flock on a file in the system's temp folder for the `with` block; a
second process asking for the same name waits there. Without xdist it costs one open().
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def exclusive(name: str):
    path = Path(tempfile.gettempdir()) / f"atss-tests-{name}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def xdist_worker() -> str | None:
    """pytest-xdist's worker name ('gw0', ...) in one of its workers, else None."""
    return os.environ.get("PYTEST_XDIST_WORKER")
