"""Running the CLI as a user does, for the tests: `python -m atss_cli ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def atss(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """`atss ARGS` from the repository root; ATSS_DEBUG unset so errors stay one line."""
    env = {k: v for k, v in os.environ.items() if k != "ATSS_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "atss_cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """A failure that prints exactly one `error: ...` line (warnings aside), no traceback, with
    every needle in it; `code`: the exit status it must have."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
