"""The deterministic weights of ../shared/reference/mmdet_atss/README.md: the parity test loads
them into our model beside MMDetection's outputs, and bench/side_by_side.py into both sides.
Scores spread over the 0.05 threshold as a trained model's do, so post-processing does real work."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch


def deterministic_state_dict(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """For entry `n` of shape `s` (k elements), u = default_rng([seed, crc32(n)]).random(k),
    mapped by the entry's kind (see the fixture's README)."""
    out = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        k = int(np.prod(shape)) if shape else 1
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.int64)
            continue
        u = np.random.default_rng([seed, zlib.crc32(name.encode())]).random(k)
        if name.endswith("running_var"):
            v = 0.5 + u
        elif name.endswith("running_mean"):
            v = 0.2 * (u - 0.5)
        elif len(shape) >= 2:
            v = (2 * u - 1) * math.sqrt(3 / int(np.prod(shape[1:])))
        elif name.endswith("atss_cls.bias"):
            v = -math.log(99) + 0.2 * (u - 0.5)
        elif name.endswith("bias"):
            v = 0.2 * (u - 0.5)
        else:
            v = 0.5 + u
        out[name] = torch.from_numpy(v.reshape(shape)).to(torch.float32)
    return out
