"""Atomic file writes, used by every layer that writes a user-visible file.

A temporary file in the same folder is written, fsynced and renamed over the target, so a kill
at any moment leaves the old file or the new one, never a torn one (at most a stray `.*.tmp`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file that replaces `path` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = None) -> Path:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        if indent is not None:
            f.write("\n")
    return Path(path)
