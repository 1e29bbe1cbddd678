"""Which torch device a command runs on, checked against what this machine has."""

from __future__ import annotations

from atss_cli.errors import AtssError, param


def resolve_device(name: str, local_rank: int | None = None):
    """"auto" | "cpu" | "cuda" | "cuda:N" -> torch.device; a bare "cuda" in a torchrun process is its
    LOCAL_RANK device. A device this machine lacks is an AtssError."""
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AtssError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AtssError(f"{param('device')} cuda but no CUDA device is available; use {param('device')} cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AtssError(f"{param('device')} {name}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    if device.type not in ("cpu", "cuda"):
        raise AtssError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device
