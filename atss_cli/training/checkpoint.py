"""Checkpoint files of a training run: written atomically, read back for an exact resume.

A checkpoint is a dict with the model under `state_dict` (MMDetection's key, so MMDetection
can load ours), plus `optimizer`, `scaler`, `epoch`, `step` (micro-steps done in that epoch),
`iteration` (optimizer steps done), `sampler`, `rng`, `config` and `versions`.
`latest.pth` is the resume point; `epoch_N.pth` are kept per epoch.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from atss_cli.atomic import atomic_open
from atss_cli.errors import AtssError, param

LATEST = "latest.pth"


def atomic_save(obj, path: Path) -> None:
    """torch.save through atss_cli.atomic: a kill leaves the old checkpoint or the new one."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict:
    from atss_cli.environment import versions as environment_versions

    return environment_versions()


def load_resume(path: Path) -> dict:
    """Read one of our training checkpoints (it holds optimizer and RNG state, so not weights_only)."""
    try:
        # Our own file, written by this code: it holds RNG tuples and numpy state that the
        # weights-only unpickler refuses.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: say which
        raise AtssError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "optimizer", "epoch", "iteration"):
        if key not in ckpt:
            raise AtssError(f"{path} is not an atss training checkpoint (no {key!r}); "
                            f"use {param('load_from')} to start from its weights instead")
    return ckpt
