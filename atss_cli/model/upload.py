"""Host-to-device copies that never make the host wait: the training step's small per-batch
tensors (padded GT boxes and labels, GT counts, image extents) are built in pinned memory when
they are bound for a CUDA device and copied with non_blocking=True. A copy from pageable memory
would block the host until the device has caught up, and cannot be captured in a CUDA graph.
"""

from __future__ import annotations

import torch


def pinned(device) -> bool:
    """Whether host tensors bound for `device` should live in pinned memory (CUDA devices)."""
    return torch.device(device).type == "cuda"


def host_tensor(data, dtype: torch.dtype, device) -> torch.Tensor:
    """A CPU tensor of `data` (nested lists of numbers), pinned when bound for a CUDA device."""
    return torch.tensor(data, dtype=dtype, pin_memory=pinned(device))


def host_zeros(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A CPU tensor of zeros, pinned when bound for a CUDA device."""
    return torch.zeros(shape, dtype=dtype, pin_memory=pinned(device))


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device`, asynchronously (asynchronous for real only from pinned memory)."""
    return t.to(device, non_blocking=True)
