"""What every command shares: the console, option aliases and the one-line error path.

Nothing here imports torch: `atss --help` must stay fast.
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from atss_cli.errors import AtssError


def console():
    """The Rich console for user-facing output (stdout); quiet progress when not a TTY."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 150)  # logs and pipes: do not squash tables to 80 columns
    return out


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error (exit 2)."""
    raise AtssError(message)


def debug_enabled() -> bool:
    return os.environ.get("ATSS_DEBUG", "") not in ("", "0")


def report_error(exc: BaseException, prefix: str = "") -> int:
    """Print one line for `exc` on stderr and return the exit code; the traceback only on request.

    `prefix` goes after "error: " (e.g. "[rank 1] " in a multi-process run).
    """
    if debug_enabled():
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, AtssError):
        _stderr_line(f"error: {prefix}{exc}")
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        _stderr_line(f"error: {prefix}file not found: {exc.filename or exc}")
        return 2
    if isinstance(exc, MemoryError):
        _stderr_line(f"error: {prefix}out of memory (host RAM); try fewer loader workers or a smaller batch")
        return 1
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _stderr_line(f"error: {prefix}internal error: {type(exc).__name__}: {msg} "
                 "(this is a bug; ATSS_DEBUG=1 shows the traceback)")
    return 1


def _stderr_line(text: str) -> None:
    # One write for the text and its newline: with PYTHONUNBUFFERED (or -u) print() makes two, and
    # the ranks of a multi-process run, sharing one stderr, could interleave between them.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Amp(str, enum.Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


# The model architecture options of commands that load a checkpoint (eval, predict): given
# flags override the checkpoint's saved config, which overrides the R50 defaults.
Depth = Annotated[Optional[int], typer.Option("--depth", help="ResNet depth (default: checkpoint config, else 50).")]
FpnChannels = Annotated[Optional[int], typer.Option("--fpn-channels", min=1)]
HeadChannels = Annotated[Optional[int], typer.Option("--head-channels", min=1)]
StackedConvs = Annotated[Optional[int], typer.Option("--stacked-convs", min=1)]

JsonOut = Annotated[
    Path | None, typer.Option("--json", help="Also write the result as JSON to this path.", dir_okay=False)
]


def process_plan(gpus: int | None, nproc: int, device: Device) -> tuple[int, str]:
    """How many processes and on which device, from --gpus / --nproc / --device (train and eval)."""
    if gpus is not None and device is Device.cpu:
        fail("--gpus needs CUDA; use --device cpu --nproc N for CPU processes")
    if gpus is not None and nproc != 1:
        fail("give either --gpus (CUDA) or --nproc (CPU), not both")
    import torch

    if gpus is not None:
        have = torch.cuda.device_count()
        if gpus > have:
            fail(f"--gpus {gpus}: this machine has {have} CUDA device(s)")
        return gpus, "cuda"
    if device is Device.cuda:
        if not torch.cuda.is_available():
            fail("--device cuda: torch sees no CUDA device")
        if nproc > 1:
            fail("--nproc is for --device cpu; use --gpus N for CUDA processes")
        return 1, "cuda"
    if device is Device.cpu or not torch.cuda.is_available():
        return nproc, "cpu"
    if nproc > 1:
        fail("--nproc is for --device cpu; use --gpus N for CUDA processes")
    return 1, "cuda"
