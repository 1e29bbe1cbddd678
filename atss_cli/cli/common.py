"""What every command shares: the console, option aliases and the one-line error path.

Nothing here imports torch: `atss --help` must stay fast.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from atss_cli.errors import AtssError
from atss_cli.terminal import console, debug_enabled, report_error  # noqa: F401 - shared by the commands


def warning(message: str) -> None:
    """A library warning on stderr, its parameters named as the flags that set them."""
    from atss_cli.errors import render
    from atss_cli.terminal import flag_for

    typer.echo(f"warning: {render(message, flag_for)}", err=True)


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error (exit 2)."""
    raise AtssError(message)


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


def progress_printer(out, prefix: str = ""):
    """The benchmarks' progress callback: dim lines on a terminal, nothing in logs and pipes."""
    if not out.is_terminal:
        return None
    return lambda msg: out.print(f"[dim]{prefix}{msg}[/dim]")


def write_json(out, path: Path | None, data) -> None:
    """`--json PATH`: the report as JSON, and one line saying where."""
    if path is not None:
        path.write_text(json.dumps(data, indent=2))
        out.print(f"wrote {path}")
