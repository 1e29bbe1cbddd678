"""Running the CLI as a user does, for the tests: `python -m atss_cli ...` in a subprocess.

The one runner of the suite (tests/conftest.py hands it out as the `atss` fixture too), the
tiny model's flags, and the one-line-error check. Every child gets the same environment: no
ATSS_DEBUG (errors stay one line), no SLURM_* (a suite run inside a SLURM job is not a task of
it), one OpenMP thread each (the runs are multi-process already), unbuffered output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The module torchrun runs as each training process (what the tests look for in /proc).
WORKER_MODULE = "atss_cli.launch.worker"

# A model small enough to train a few iterations in seconds on 2 CPU cores, from random weights.
# TINY_MODEL: the model and loop; TINY: the same from scratch (no ImageNet file here; the recipe's
# frozen stem, layer1 and BatchNorm statistics stay).
TINY_MODEL = ["--set", "depth=18", "--set", "fpn_channels=32", "--set", "head_channels=64",
              "--set", "stacked_convs=1", "--set", "scale=128,128", "--set", "workers=0",
              "--set", "warmup_iters=2", "--set", "log_interval=1"]
TINY = [*TINY_MODEL, "--from-scratch"]
# The small COCO folder (tests/conftest.py's `small_coco`): 8 train and 4 val images at 128 px.
SMALL_COCO = ["--num-train", 8, "--num-val", 4, "--seed", 3, "--size", 128]


def cli_env(extra: dict | None = None) -> dict:
    """The environment of every CLI child: ours without ATSS_DEBUG and SLURM_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "ATSS_DEBUG" and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def atss_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "atss_cli", *map(str, args)]


def atss(*args, timeout=300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`atss ARGS` from the repository root, to the end; `env`: variables on top of `cli_env()`."""
    return subprocess.run(atss_cmd(*args), cwd=ROOT, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def start(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """`atss ARGS` started and left running (output piped as text unless `kwargs` say otherwise)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(atss_cmd(*args), cwd=ROOT, env=cli_env(env), text=True, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None,
                          warnings: bool = True) -> str:
    """A failure that prints exactly one `error: ...` line, no traceback, with every needle in it;
    `code`: the exit status it must have; `warnings=False`: not even a `warning:` line beside it."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if not (warnings and line.startswith("warning:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
